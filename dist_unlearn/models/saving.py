"""Atomic model saving: write everything into a temporary sibling folder, then rename it into place.

A crash or an exception while writing leaves the destination exactly as it was (absent, or the previous
save) and removes the temporary folder, so nothing half-written is ever visible under ``path``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from torch import nn

from dist_unlearn.errors import OutputError

PLAIN_FORMAT = "dist_unlearn.torch_module"
WEIGHTS_NAME = "model.safetensors"


def _write_plain(model: nn.Module, folder: Path) -> None:
    from safetensors.torch import save_model as save_safetensors

    save_safetensors(model, str(folder / WEIGHTS_NAME))  # handles shared/aliased tensors
    cls = type(model)
    meta = {
        "dist_unlearn_format": PLAIN_FORMAT,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "parameters": {n: list(p.shape) for n, p in model.state_dict().items()},
        "dtypes": sorted({str(p.dtype) for p in model.state_dict().values()}),
    }
    (folder / "config.json").write_text(json.dumps(meta, indent=2))


def _write(model: nn.Module, folder: Path, tokenizer: Any) -> None:
    if callable(getattr(model, "save_pretrained", None)):
        model.save_pretrained(str(folder))  # safetensors is the default (and only) format in transformers 5
    else:
        _write_plain(model, folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))


def save_model(model: nn.Module, path: str | Path, tokenizer: Any = None) -> Path:
    """Save ``model`` (and ``tokenizer``) to the folder ``path`` atomically.

    transformers / peft models use ``save_pretrained`` (safetensors; a peft model saves its adapter); a plain
    ``nn.Module`` is saved as ``model.safetensors`` (state dict) + ``config.json`` (class name, shapes).
    An existing folder at ``path`` is replaced only once the new one is complete.

    Returns:
        The destination path.

    Raises:
        OutputError: when writing fails (the destination is untouched, the temporary folder removed).
    """
    dest = Path(path)
    if dest.exists() and not dest.is_dir():
        raise OutputError(f"cannot save the model to {str(dest)!r}: it exists and is not a folder.")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    except OSError as e:
        raise OutputError(f"cannot create a folder next to {str(dest)!r}: {e}") from e
    try:
        _write(model, tmp, tokenizer)
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(dest, old)
            try:
                os.replace(tmp, dest)
            except OSError:
                os.replace(old, dest)  # put the previous save back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(
            f"saving the model to {str(dest)!r} failed ({type(e).__name__}: {e}); "
            "the destination was left unchanged."
        ) from e
    return dest


def load_plain_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a folder written by :func:`save_model` for a plain ``nn.Module`` into ``model`` (strict)."""
    from safetensors.torch import load_model as load_safetensors

    load_safetensors(model, str(Path(path) / WEIGHTS_NAME))
    return model
