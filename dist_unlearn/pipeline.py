"""One experiment end to end, as a readable recipe.

    config -> task data -> forget split (R rounds) -> train the original model (cached per config hash)
           -> per round: retrain the oracle on the retain set (cached) -> each method via
           dist_unlearn.unlearn,
              starting from that method's model of the previous round -> evaluate against the oracle
           -> results.json + report + final models

Sequential unlearning (``forget.rounds = R > 1``): the forget set is cut into R disjoint chunks (random,
seeded);
round r forgets chunk r with retain = train minus chunks 0..r, and the oracle of round r is retrained on that
retain set. Round 1 of 1 is ordinary batch unlearning.

Outputs are staged in a hidden folder inside the output directory and moved into place only when everything
succeeded, so a failed run leaves no half-written results, reports or models (the model cache, written file by
file atomically, survives to speed up the next try).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dist_unlearn.config import ExperimentConfig, ForgetConfig
from dist_unlearn.errors import ConfigError, DataError, DistUnlearnError, OutputError
from dist_unlearn.eval import measure_resources
from dist_unlearn.tasks import Task, get_task
from dist_unlearn.tasks.base import TrainRecipe, atomic_torch_save

Log = Callable[[str], None]


@dataclass
class Round:
    """One round of forgetting: unlearn ``forget`` keeping ``retain``; ``forgotten`` = all chunks so far."""

    index: int
    retain: Any
    forget: Any
    forgotten: Any


def plan_rounds(train: Any, forget: ForgetConfig) -> list[Round]:
    """Resolve the forget config against the training set (``dist_unlearn.data.split_forget``) into rounds."""
    from dist_unlearn.data import split_forget

    spec = {
        k: getattr(forget, k)
        for k in ("ids", "label", "fraction", "ids_file")
        if getattr(forget, k) is not None
    }
    if forget.fraction is not None:
        spec["seed"] = forget.seed
    if forget.group_column is not None:
        if forget.group_column not in train.column_names:
            raise DataError(
                f"forget.group_column={forget.group_column!r} is not a column of the training data "
                f"(columns: {train.column_names})"
            )
        groups = np.asarray(train[forget.group_column])
        uniq = np.unique(groups)
        k = int(round(forget.fraction * len(uniq)))
        if k == 0 or k == len(uniq):
            raise DataError(
                f"forget.fraction={forget.fraction} of {len(uniq)} groups of "
                f"{forget.group_column!r} is {k} groups; need between 1 and {len(uniq) - 1}"
            )
        chosen = np.random.default_rng(forget.seed).choice(uniq, size=k, replace=False)
        spec = {"ids": [int(i) for i in np.asarray(train["id"])[np.isin(groups, chosen)]]}
    full = split_forget(train, spec, label_column=forget.label_column)
    forget_idx = np.asarray(full.forget_indices)
    if forget.rounds > len(forget_idx):
        raise DataError(f"forget.rounds={forget.rounds} exceeds the forget set size {len(forget_idx)}")
    if forget.rounds == 1:
        return [Round(0, full.retain, full.forget, full.forget)]
    chunks = np.array_split(np.random.default_rng(forget.seed).permutation(forget_idx), forget.rounds)
    rounds, gone = [], np.zeros(len(train), dtype=bool)
    for r, chunk in enumerate(chunks):
        gone[chunk] = True
        rounds.append(
            Round(
                r,
                retain=train.select(np.flatnonzero(~gone).tolist()),
                forget=train.select(sorted(chunk.tolist())),
                forgotten=train.select(np.flatnonzero(gone).tolist()),
            )
        )
    return rounds


def numeric_view(dataset: Any) -> Any:
    """The dataset without text columns (what the oracle and the training loops batch)."""
    from dist_unlearn.tasks.base import _numeric

    keep = [c for c, f in dataset.features.items() if _numeric(f)]
    return dataset.select_columns(keep)


# ----- outputs ---------------------------------------------------------------------------------------------
@contextmanager
def staged_output(out_dir: Path) -> Iterator[Path]:
    """A hidden staging folder inside ``out_dir``; its entries replace those of ``out_dir`` on success
    only."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=out_dir, prefix=".staging-"))
    except OSError as exc:
        raise OutputError(f"cannot create output directory {str(out_dir)!r}: {exc}") from exc
    try:
        yield stage
        old = stage / ".replaced"
        old.mkdir()
        for entry in sorted(stage.iterdir()):
            if entry.name == ".replaced":
                continue
            dest = out_dir / entry.name
            if dest.exists():
                os.replace(dest, old / entry.name)
            os.replace(entry, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


class ModelCache:
    """Trained models keyed by a hash of everything that determines them (``<out>/cache/<key>.pt``)."""

    def __init__(self, root: Path, enabled: bool = True):
        self.root, self.enabled = root, enabled

    def get_or_train(
        self,
        key: str,
        task: Task,
        dataset: Any,
        recipe: TrainRecipe,
        *,
        seed: int,
        progress: bool,
        desc: str,
        log: Log,
    ) -> tuple[torch.nn.Module, dict[str, float]]:
        """(trained model, {"wall_time_s", "cpu_time_s"}) of the run that trained it (also when cached)."""
        path = self.root / f"{key}.pt"
        model = task.build_model()
        if self.enabled and path.is_file():
            blob = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(blob["state"])
            log(f"{desc}: loaded from cache {path} (trained in {blob['times']['wall_time_s']:.1f} s)")
            times = dict(blob["times"])
            times.setdefault("cost", task.training_cost(len(dataset), recipe))
            return model.eval(), times
        t0, c0 = time.perf_counter(), time.process_time()
        task.train(model, dataset, recipe, seed=seed, progress=progress, desc=desc)
        times = {"wall_time_s": time.perf_counter() - t0, "cpu_time_s": time.process_time() - c0}
        times["cost"] = task.training_cost(len(dataset), recipe)  # example passes (dist_unlearn.cost)
        log(f"{desc}: trained in {times['wall_time_s']:.1f} s on {len(dataset)} examples")
        if self.enabled:
            atomic_torch_save({"state": model.state_dict(), "times": times}, path)
        return model.eval(), times


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if hasattr(x, "as_dict"):
        return _jsonable(x.as_dict())
    if hasattr(x, "__dataclass_fields__"):
        return _jsonable({k: getattr(x, k) for k in x.__dataclass_fields__})
    if isinstance(x, torch.Tensor | np.ndarray | np.generic):
        return _jsonable(x.tolist())
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if x is None or isinstance(x, bool | int | float | str):
        return x
    return repr(x)


def validate_methods(cfg: ExperimentConfig) -> None:
    """Check every method name and its options before anything is trained (ConfigError with a suggestion)."""
    from dist_unlearn.methods import get_method
    from dist_unlearn.options import UnlearnOptions

    for i, m in enumerate(cfg.methods):
        try:
            get_method(m.name)
            UnlearnOptions(**cfg.method_options(m))
        except ConfigError as exc:
            raise ConfigError(f"methods[{i}] ({m.display}): {exc}") from None


# ----- the experiment --------------------------------------------------------------------------------------
def run_experiment(
    cfg: ExperimentConfig,
    *,
    out_dir: str | Path | None = None,
    use_cache: bool = True,
    log: Log | None = None,
) -> dict[str, Any]:
    """Run ``cfg`` and write ``results.json``, ``report.md`` (+ plots) and ``models/<method>/`` to the
    output dir.

    Returns:
        The results dictionary written to ``results.json``.

    Raises:
        ConfigError / DataError / NumericalError / OutputError: the run stops and nothing is written but
        cache.
    """
    from dist_unlearn.api import unlearn

    log = log or (lambda msg: tqdm.write(msg))
    out = Path(out_dir or cfg.output_dir)
    validate_methods(cfg)
    task = get_task(cfg.task.name)(cfg.task.params, seed=cfg.seed)
    recipe = task.recipe(cfg.train.model_dump())
    data = task.data()
    rounds = plan_rounds(data.train, cfg.forget)
    cache = ModelCache(out / "cache", enabled=use_cache)
    progress = cfg.progress

    experiment: dict[str, Any] = {
        "name": cfg.name,
        "task": cfg.task.name,
        "kind": task.kind,
        "level": cfg.forget.level,
        "rounds": len(rounds),
        "n_train": len(data.train),
        "n_test": len(data.test),
        "n_forget_total": sum(len(r.forget) for r in rounds),
        "recipe": dict(recipe.__dict__),
        "config": cfg.model_dump(mode="json"),
    }
    round_records: list[dict[str, Any]] = []
    with staged_output(out) as stage:
        base_key = f"original-{cfg.task.name}-{cfg.hash('task', 'train')}"
        original, t_orig = cache.get_or_train(
            base_key,
            task,
            data.train,
            recipe,
            seed=cfg.seed,
            progress=progress,
            desc="train original",
            log=log,
        )
        experiment["train_original"] = t_orig
        current = {m.display: original for m in cfg.methods}
        for rnd in rounds:
            tag = f"round {rnd.index + 1}/{len(rounds)}" if len(rounds) > 1 else "retrain oracle"
            oracle_key = f"oracle-{cfg.task.name}-{cfg.hash('task', 'train', 'forget')}-r{rnd.index}"
            oracle, t_retrain = cache.get_or_train(
                oracle_key,
                task,
                rnd.retain,
                recipe,
                seed=cfg.seed,
                progress=progress,
                desc=f"{tag}: retrain",
                log=log,
            )
            splits = {"retain": rnd.retain, "forget": rnd.forgotten, "test": data.test}
            reference = task.reference(oracle, **splits, batch_size=cfg.eval.batch_size)

            def evaluate(model: torch.nn.Module, splits: dict = splits, reference: Any = reference) -> dict:
                return task.evaluate(
                    model, **splits, oracle=reference, original=original, batch_size=cfg.eval.batch_size
                )

            methods: dict[str, Any] = {
                "original": {
                    "metrics": evaluate(original),
                    "resources": t_orig,
                    "stats": {"role": "model before unlearning (trained on everything)"},
                },
                "retrain": {
                    "metrics": {
                        **evaluate(oracle),
                        "time_fraction_of_retrain": 1.0,
                        "cpu_time_fraction_of_retrain": 1.0,
                    },
                    "resources": t_retrain,
                    "stats": {"role": "oracle: retrained from scratch on the retain set"},
                },
            }
            for m in tqdm(cfg.methods, desc=f"{tag}: methods", disable=not progress, leave=False):
                opts = cfg.method_options(m)
                opts.setdefault("seed", cfg.seed)
                opts.setdefault("progress", progress)
                start = copy.deepcopy(current[m.display])
                log(f"{tag}: {m.display} {opts}")
                with measure_resources() as usage:
                    res = unlearn(
                        start,
                        task.loss_fn,
                        numeric_view(rnd.retain),
                        numeric_view(rnd.forget),
                        method=m.name,
                        **opts,
                    )
                current[m.display] = res.model
                metrics = evaluate(res.model)
                metrics["time_fraction_of_retrain"] = usage.wall_time_s / t_retrain["wall_time_s"]
                metrics["cpu_time_fraction_of_retrain"] = usage.cpu_time_s / max(
                    t_retrain["cpu_time_s"], 1e-9
                )
                methods[m.display] = {
                    "metrics": metrics,
                    "steps": res.steps,
                    "resources": usage,
                    "stats": {"method": m.name, "options": opts, **res.stats},
                }
                log(f"{tag}: {m.display} done in {usage.wall_time_s:.2f} s, ToW={metrics.get('tow')}")
            round_records.append(
                {
                    "round": rnd.index,
                    "n_retain": len(rnd.retain),
                    "n_forget": len(rnd.forget),
                    "n_forgotten": len(rnd.forgotten),
                    "retrain": t_retrain,
                    "methods": methods,
                }
            )
        experiment["retrain"] = round_records[-1]["retrain"]
        results = _jsonable(
            {
                "experiment": experiment,
                "methods": round_records[-1]["methods"],
                "rounds": round_records if len(rounds) > 1 else [],
            }
        )
        _write_outputs(results, stage, cfg, task, current)
    return results


def _write_outputs(results: dict, stage: Path, cfg: ExperimentConfig, task: Task, models: dict) -> None:
    """results.json, report and models into the staging folder (moved into place by staged_output)."""
    try:
        from dist_unlearn.eval import write_results

        write_results(results, stage)
    except ImportError:  # pragma: no cover - eval module not there yet
        (stage / "results.json").write_text(json.dumps(results, indent=2))
    (stage / "config.yaml").write_text(_yaml_dump(cfg.model_dump(mode="json")))
    if cfg.eval.report:
        from dist_unlearn.eval import write_report

        write_report(results, stage)
    if cfg.eval.save_models:
        for name, model in tqdm(models.items(), desc="save models", disable=not cfg.progress, leave=False):
            try:
                task.save(model, stage / "models" / _safe(name))
            except DistUnlearnError:
                raise
            except OSError as exc:
                raise OutputError(f"cannot save model of {name!r}: {exc}") from exc


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _yaml_dump(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)
