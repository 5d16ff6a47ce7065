"""The task interface, the registry and the shared training loop."""

from __future__ import annotations

import importlib
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from tqdm.auto import tqdm

from dist_unlearn.data.batches import iterate_batches
from dist_unlearn.errors import ConfigError, DataError, NumericalError, reject_unknown

# name -> "module:Class"; modules are imported on first use so a task's optional dependencies
# (sentence-transformer weights, vaderSentiment) are only needed when that task runs.
_REGISTRY: dict[str, str | type[Task]] = {
    "digits_cnn": "dist_unlearn.tasks.digits_cnn:DigitsCNNTask",
    "minilm_sentiment": "dist_unlearn.tasks.minilm_sentiment:MiniLMSentimentTask",
    "tofu_gpt2": "dist_unlearn.tasks.tofu_gpt2:TofuGPT2Task",
}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator adding a :class:`Task` subclass to the registry under ``name``."""

    def deco(cls: type[Task]) -> type[Task]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available_tasks() -> list[str]:
    return sorted(_REGISTRY)


def get_task(name: str) -> type[Task]:
    """The task class registered as ``name``.

    Raises:
        ConfigError: unknown name (with the closest registered name).
    """
    if name not in _REGISTRY:
        reject_unknown("task", [name], _REGISTRY)
    entry = _REGISTRY[name]
    if isinstance(entry, str):
        module, cls_name = entry.split(":")
        entry = getattr(importlib.import_module(module), cls_name)
        _REGISTRY[name] = entry
    return entry


class TaskParams(BaseModel):
    """Base of each task's parameter schema (``task.params`` in the config)."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class TaskData:
    """What a task provides: ``train`` (ids 0..n-1 in column ``id``, class in ``label``) and ``test``."""

    train: Any  # datasets.Dataset
    test: Any  # datasets.Dataset
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainRecipe:
    epochs: int
    lr: float
    batch_size: int
    weight_decay: float = 0.0


class Task:
    """Base class. Subclasses set ``name``, ``kind``, ``Params``, ``default_recipe`` and implement the
    hooks."""

    name: ClassVar[str] = "task"
    kind: ClassVar[str] = "classification"  # or "causal_lm"
    Params: ClassVar[type[TaskParams]] = TaskParams
    default_recipe: ClassVar[TrainRecipe] = TrainRecipe(epochs=10, lr=1e-3, batch_size=64)

    def __init__(self, params: dict[str, Any] | None = None, *, seed: int = 0):
        params = dict(params or {})
        reject_unknown(f"param of task {self.name!r}", params, self.Params.model_fields)
        try:
            self.params = self.Params.model_validate(params)
        except ValidationError as exc:
            errs = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()
            )
            raise ConfigError(f"invalid params for task {self.name!r}: {errs}") from None
        self.seed = seed
        self._data: TaskData | None = None
        self.train_costs: dict[str, dict[str, Any]] = {}

    # ----- hooks ---------------------------------------------------------------------------------------
    def build_data(self) -> TaskData:
        raise NotImplementedError

    def build_model(self) -> torch.nn.Module:
        """A freshly initialised (or freshly loaded pretrained) model, deterministic in ``self.seed``."""
        raise NotImplementedError

    def loss_fn(self, model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def predict_fn(self, model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """Logits of a batch (classification tasks)."""
        raise NotImplementedError

    def reference(self, oracle, *, retain, forget, test, batch_size=256) -> Any:
        """The oracle's outputs on the splits, computed once and passed as ``oracle=`` to :meth:`evaluate`."""
        from dist_unlearn.eval import classifier_reference

        return classifier_reference(
            oracle, retain=retain, forget=forget, test=test, predict_fn=self.predict_fn, batch_size=batch_size
        )

    def evaluate(self, model, *, retain, forget, test, oracle, original=None, batch_size=256) -> dict:
        """Metrics of ``model`` against the retrained ``oracle`` (a model or :meth:`reference`)."""
        from dist_unlearn.eval import evaluate_classifier

        return evaluate_classifier(
            model,
            retain=retain,
            forget=forget,
            test=test,
            oracle=oracle,
            original=original,
            predict_fn=self.predict_fn,
            batch_size=batch_size,
        )

    def tokenizer(self) -> Any:
        return None

    # ----- shared --------------------------------------------------------------------------------------
    def data(self) -> TaskData:
        """The task's data, built once per task object."""
        if self._data is None:
            self._data = self.build_data()
        return self._data

    def recipe(self, overrides: dict[str, Any] | None = None) -> TrainRecipe:
        base = dict(self.default_recipe.__dict__)
        base.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return TrainRecipe(**base)

    def train(
        self,
        model: torch.nn.Module,
        dataset: Any,
        recipe: TrainRecipe,
        *,
        seed: int = 0,
        progress: bool = True,
        desc: str = "train",
    ) -> torch.nn.Module:
        """Train ``model`` on ``dataset`` with AdamW (the original model and the retrained oracle).

        Only parameters with ``requires_grad`` are optimised (LoRA: the adapters). The work done is kept in
        ``self.train_costs[desc]`` (a :class:`~dist_unlearn.cost.CostCounter` dict: ``train_step`` = one
        example pass per example per epoch), so original training and retraining compare with unlearning in
        the same machine-independent unit (:meth:`training_cost` gives it without training).
        """
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
        n = len(dataset)
        if n == 0:
            raise DataError("cannot train on an empty dataset")
        steps_per_epoch = math.ceil(n / recipe.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=recipe.lr, total_steps=recipe.epochs * steps_per_epoch, pct_start=0.1
        )
        model.train()
        bar = tqdm(total=recipe.epochs * steps_per_epoch, desc=desc, disable=not progress, leave=False)
        for epoch in range(recipe.epochs):
            for batch in iterate_batches(dataset, recipe.batch_size, shuffle=True, seed=seed * 1000 + epoch):
                loss = self.loss_fn(model, batch)
                if not torch.isfinite(loss):
                    raise NumericalError(f"training loss became {loss.item()} in epoch {epoch} ({desc})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()
        model.eval()
        self.train_costs[desc] = self.training_cost(n, recipe)
        return model

    @staticmethod
    def training_cost(n_examples: int, recipe: TrainRecipe) -> dict[str, Any]:
        """Example passes of :meth:`train` on ``n_examples`` with ``recipe``: epochs x n train steps."""
        from dist_unlearn.cost import CostCounter

        counter = CostCounter()
        counter.add(
            "train_step",
            recipe.epochs * n_examples,
            calls=recipe.epochs * math.ceil(n_examples / recipe.batch_size),
        )
        return counter.as_dict()

    def save(self, model: torch.nn.Module, path: str | Path) -> None:
        """Save a final model (``dist_unlearn.models.save_model``: atomic, safetensors)."""
        from dist_unlearn.models import save_model

        save_model(model, str(path), tokenizer=self.tokenizer())

    def load(self, path: str | Path) -> torch.nn.Module:
        """Load a model saved by :meth:`save` (weights into :meth:`build_model`'s architecture)."""
        from safetensors.torch import load_file

        files = sorted(Path(path).glob("*.safetensors"))
        if not files:
            raise DataError(f"no *.safetensors file in {str(path)!r}")
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(str(f)))
        model = self.build_model()
        load_state(model, state, source=str(path))
        return model.eval()


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load a state dict, tolerating a common ``model.``/``module.`` prefix and tied weights left out."""
    own = model.state_dict()
    fixed = {}
    for k, v in state.items():
        for prefix in ("", "model.", "module."):
            if k.startswith(prefix) and k[len(prefix) :] in own:
                fixed[k[len(prefix) :]] = v
                break
    missing = [k for k in own if k not in fixed]
    # tied weights (e.g. GPT-2 lm_head) may be absent from safetensors files
    missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing:
        raise DataError(f"weights in {source!r} do not match the task model: missing {missing[:5]}")
    model.load_state_dict(fixed, strict=False)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, then rename (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
