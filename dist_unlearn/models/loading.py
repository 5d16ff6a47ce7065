"""Load a model: transformers Auto classes (hub names or local folders), saved peft adapters, plain
modules."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dist_unlearn.errors import ModelError, reject_unknown
from dist_unlearn.models.lora import lora_from_options
from dist_unlearn.models.saving import PLAIN_FORMAT, load_plain_weights

TASKS = ("classification", "causal_lm")
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float64": torch.float64,
    "fp64": torch.float64,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """torch dtype from a name like "bfloat16" / "fp32" (or a torch.dtype, or None)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        reject_unknown("dtype", [str(dtype)], _DTYPES)
    return _DTYPES[dtype]


def _auto_class(task: str) -> Any:
    import transformers

    return (
        transformers.AutoModelForSequenceClassification
        if task == "classification"
        else transformers.AutoModelForCausalLM
    )


def _load_folder_meta(path: Path) -> dict:
    cfg = path / "config.json"
    if cfg.is_file():
        try:
            return json.loads(cfg.read_text())
        except json.JSONDecodeError:
            return {}
    return {}


def load_model(
    name_or_path: str | Path | nn.Module | Callable[[], nn.Module],
    *,
    task: str = "classification",
    lora: dict | bool | None = None,
    dtype: str | torch.dtype | None = None,
    factory: Callable[[], nn.Module] | None = None,
    base_model: str | Path | None = None,
    **hf_kwargs: Any,
) -> nn.Module:
    """Load or build a model, optionally with LoRA adapters.

    Args:
        name_or_path: a transformers hub name or local folder (``from_pretrained`` with the Auto class of
            ``task``), a folder of a saved peft adapter (its base model is loaded first), a folder written by
            ``save_model`` for a plain module (needs ``factory``), an ``nn.Module``, or a factory returning
            one.
        task: "classification" (AutoModelForSequenceClassification) or "causal_lm" (AutoModelForCausalLM).
        lora: None, True (defaults) or {r, alpha, target_modules, dropout}: see :func:`apply_lora`.
        dtype: parameter dtype ("float32", "bfloat16", ... or a torch.dtype); None keeps the stored one.
        factory: builds the empty module whose weights a plain-module folder holds.
        base_model: for a peft adapter folder, the base model to load it on (None: the base named in its
            ``adapter_config.json``).
        **hf_kwargs: passed to ``from_pretrained`` (e.g. ``num_labels=3``).

    Raises:
        ConfigError: unknown task or dtype.
        ModelError: the model cannot be found or loaded.
    """
    if task not in TASKS:
        reject_unknown("task", [task], TASKS)
    torch_dtype = resolve_dtype(dtype)
    if isinstance(name_or_path, nn.Module):
        model = name_or_path
    elif callable(name_or_path) and not isinstance(name_or_path, str | Path):
        model = name_or_path()
        if not isinstance(model, nn.Module):
            raise ModelError(f"the model factory returned {type(model).__name__}, not an nn.Module.")
    else:
        model = _load_named(
            Path(name_or_path) if isinstance(name_or_path, Path) else name_or_path,
            task,
            torch_dtype,
            factory,
            hf_kwargs,
            base_model,
        )
    if torch_dtype is not None:
        model.to(torch_dtype)
    if lora is not None and lora is not False:
        model = lora_from_options(model, lora)
    return model


def _load_named(
    name: str | Path,
    task: str,
    dtype: torch.dtype | None,
    factory: Callable | None,
    hf_kwargs: dict,
    base_model: str | Path | None = None,
) -> nn.Module:
    path = Path(name)
    if path.is_dir():
        meta = _load_folder_meta(path)
        if meta.get("dist_unlearn_format") == PLAIN_FORMAT:
            if factory is None:
                raise ModelError(
                    f"{str(path)!r} holds a plain nn.Module ({meta.get('class')}); pass factory= to "
                    "build the empty module its weights are loaded into."
                )
            return load_plain_weights(factory(), path)
        if (path / "adapter_config.json").is_file():
            return _load_adapter(path, task, dtype, hf_kwargs, base_model)
    elif isinstance(name, Path) or str(name).startswith((".", "/", "~")):
        raise ModelError(f"model folder {str(name)!r} does not exist.")
    kwargs = dict(hf_kwargs)
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        return _auto_class(task).from_pretrained(str(name), **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(
            f"cannot load {str(name)!r} as a {task} model "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Give a local folder "
            "with config.json and weights (HF_HUB_OFFLINE is set), or an nn.Module."
        ) from e


def _load_adapter(
    path: Path, task: str, dtype: torch.dtype | None, hf_kwargs: dict, base_model: str | Path | None = None
) -> nn.Module:
    from peft import PeftConfig, PeftModel

    base_name = base_model or PeftConfig.from_pretrained(str(path)).base_model_name_or_path
    if not base_name:
        raise ModelError(f"the adapter in {str(path)!r} does not name its base model.")
    base = _load_named(base_name, task, dtype, None, hf_kwargs)
    model = PeftModel.from_pretrained(base, str(path), is_trainable=True)
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    return model
