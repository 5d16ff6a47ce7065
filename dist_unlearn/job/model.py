"""The job's model: check the folder cheaply first, then load it with the Auto class its config names.

A model folder is a ``save_pretrained`` folder (``config.json`` + weights + tokenizer files) or a peft adapter
folder (``adapter_config.json`` + adapter weights; the base model comes from ``base_model_name_or_path`` or
the job's ``base_model:``). Whether the model is a causal LM or a sequence classifier is read from the
config's ``architectures``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from dist_unlearn.errors import ModelError

WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model")


@dataclass(frozen=True)
class ModelSource:
    """What a model folder holds, found without loading any weights.

    Attributes:
        path: the folder given.
        task: ``"causal_lm"`` or ``"classification"``.
        adapter: True for a peft adapter folder.
        base: the full model folder (the base of an adapter, else ``path``).
        tokenizer_path: where the tokenizer files are (the model folder, else the adapter's base).
        config: the (base) model's ``config.json``.
    """

    path: Path
    task: str
    adapter: bool
    base: Path
    tokenizer_path: Path
    config: dict[str, Any]

    @property
    def num_labels(self) -> int | None:
        """Classes of a classifier (from ``id2label``), None for a causal LM."""
        if self.task != "classification":
            return None
        id2label = self.config.get("id2label")
        return len(id2label) if id2label else int(self.config.get("num_labels", 2))

    @property
    def label2id(self) -> dict[str, int] | None:
        """The classifier's label names -> indices (None when the config has none)."""
        got = self.config.get("label2id")
        return {str(k): int(v) for k, v in got.items()} if got else None


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{what} {str(path)!r} is not readable JSON ({e}).") from e


def _task_of_config(cfg: dict[str, Any], where: Path) -> str:
    names = list(cfg.get("architectures") or [])
    for n in names:
        if "SequenceClassification" in n:
            return "classification"
        if "CausalLM" in n or "LMHeadModel" in n:
            return "causal_lm"
    raise ModelError(
        f"the model in {str(where)!r} has architectures={names or None}; the unlearn job supports "
        "*ForCausalLM / *LMHeadModel and *ForSequenceClassification models (save them with save_pretrained)."
    )


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def inspect_model(path: str | Path, base_model: str | None = None) -> ModelSource:
    """Check a model folder without loading weights.

    The tokenizer (small) is loaded to check it against the config's ``vocab_size``.

    Raises:
        ModelError: missing folder, not a model (no config.json / adapter_config.json, no weight files), an
            adapter whose base cannot be found, an unsupported architecture, no tokenizer files, a tokenizer
            that cannot be loaded, or one with ids past the model's vocabulary.
    """
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model path {str(p)!r} does not exist.")
    if not p.is_dir():
        raise ModelError(f"model path {str(p)!r} is a file; give the folder written by save_pretrained.")
    adapter = (p / "adapter_config.json").is_file()
    if adapter:
        acfg = _read_json(p / "adapter_config.json", "adapter config")
        base_name = base_model or acfg.get("base_model_name_or_path")
        if not base_name:
            raise ModelError(
                f"the adapter in {str(p)!r} does not name its base model; set base_model: in the job."
            )
        base = Path(base_name)
        if not (base / "config.json").is_file():
            raise ModelError(
                f"the base model {base_name!r} of the adapter in {str(p)!r} is not a local model folder "
                "(no config.json); set base_model: to the folder of the base model."
            )
    else:
        if base_model is not None:
            raise ModelError(f"base_model={base_model!r} is only for adapter folders; {str(p)!r} is not one.")
        if not (p / "config.json").is_file():
            raise ModelError(
                f"model path {str(p)!r} is not a model folder: it has no config.json (nor "
                "adapter_config.json). Give a folder written by save_pretrained."
            )
        base = p
    weights_in = p
    if not any(any(weights_in.glob(g)) for g in WEIGHT_GLOBS):
        raise ModelError(
            f"model folder {str(p)!r} has no weight files ({', '.join(WEIGHT_GLOBS)}); it is not a saved "
            "model."
        )
    cfg = _read_json(base / "config.json", "model config")
    task = _task_of_config(cfg, base)
    for folder in (p, base):
        if _has_tokenizer(folder):
            tok = folder
            break
    else:
        raise ModelError(
            f"no tokenizer next to the model in {str(p)!r} (none of {', '.join(TOKENIZER_FILES)}); save it "
            "with tokenizer.save_pretrained(model_folder)."
        )
    src = ModelSource(path=p, task=task, adapter=adapter, base=base, tokenizer_path=tok, config=cfg)
    check_vocab(src, load_tokenizer(src))
    return src


def config_vocab_size(cfg: dict[str, Any]) -> int | None:
    """``vocab_size`` of a model config (or of its ``text_config``), None when it names none."""
    for c in (cfg, cfg.get("text_config") or {}):
        size = c.get("vocab_size") if isinstance(c, dict) else None
        if isinstance(size, int) and not isinstance(size, bool):
            return size
    return None


def check_vocab(src: ModelSource, tokenizer: Any) -> None:
    """The tokenizer/model mismatch check of :func:`dist_unlearn.models.check_tokenizer`, from the config's
    ``vocab_size`` alone, so that it fails before any weights are loaded.

    Raises:
        ModelError: the tokenizer has more tokens, or a special-token id at or past, the model's vocabulary.
    """
    rows = config_vocab_size(src.config)
    if rows is None:
        return  # checked on the loaded model's input embedding instead
    from dist_unlearn.models.tokenizer import check_tokenizer_ids

    where = (
        f"the tokenizer in {str(src.tokenizer_path)!r} and the model in {str(src.base)!r} do not belong "
        "together: "
    )
    check_tokenizer_ids(tokenizer, rows, f"the model's vocab_size is {rows}", where)


def load_tokenizer(src: ModelSource) -> Any:
    """The tokenizer saved with the model (a pad token is set from EOS when it has none).

    Raises:
        ModelError: the tokenizer files cannot be loaded.
    """
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(src.tokenizer_path))
    except Exception as e:  # transformers raises OSError/ValueError/KeyError for broken files
        raise ModelError(
            f"the tokenizer in {str(src.tokenizer_path)!r} cannot be loaded ({type(e).__name__}: {e})."
        ) from e
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    return tok


def model_kwargs(src: ModelSource, dtype: str | None = None) -> dict[str, Any]:
    """Keyword arguments of :func:`dist_unlearn.models.load_model` that load this model (also on workers)."""
    kw: dict[str, Any] = {"task": src.task}
    if dtype is not None:
        kw["dtype"] = dtype
    if src.adapter:
        kw["base_model"] = str(src.base)
    return kw


def load_job_model(src: ModelSource, dtype: str | None = None) -> nn.Module:
    """Load the model (an adapter on its base, only the ``lora_`` weights trainable), in eval mode."""
    from dist_unlearn.models import load_model

    model = load_model(str(src.path), **model_kwargs(src, dtype))
    return model.eval()


def weight_names(model: nn.Module) -> list[str]:
    """Names of the parameters unlearning may change (``requires_grad``)."""
    return [n for n, p in model.named_parameters() if p.requires_grad]
