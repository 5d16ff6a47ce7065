"""Attention kernels with a double backward.

Flash / memory-efficient / cuDNN attention kernels implement one backward pass only, so double backward
(exact HVP) and the Gauss-Newton trick fail with them. HF models are switched to the ``eager`` implementation,
and every curvature computation runs inside :func:`math_sdpa`, which restricts
``torch.nn.functional.scaled_dot_product_attention`` to its math kernel (for plain modules that call it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

_TWICE_DIFFERENTIABLE = ("eager",)


def _configs(model: nn.Module) -> list:
    seen, out = set(), []
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation") and id(cfg) not in seen:
            seen.add(id(cfg))
            out.append((m, cfg))
    return out


def ensure_double_backward_attention(model: nn.Module) -> str | None:
    """Switch every HF attention implementation in ``model`` to ``eager`` when it is not already.

    Uses ``PreTrainedModel.set_attn_implementation`` when the model has it (transformers >= 4.5x), else sets
    ``config._attn_implementation``. Returns the previous implementation name (None for non-HF modules).
    """
    previous = None
    for m, cfg in _configs(model):
        impl = getattr(cfg, "_attn_implementation", None)
        previous = previous or impl
        if impl in _TWICE_DIFFERENTIABLE or impl is None:
            continue
        setter = getattr(m, "set_attn_implementation", None)
        if callable(setter):
            try:
                setter("eager")
            except Exception:  # noqa: BLE001 - fall back to the config field below
                pass
        if getattr(cfg, "_attn_implementation", None) != "eager":  # the setter may only warn
            cfg._attn_implementation = "eager"
    return previous


def attention_implementation(model: nn.Module) -> str | None:
    """The attention implementation of the first HF config in ``model`` (None for plain modules)."""
    cfgs = _configs(model)
    return getattr(cfgs[0][1], "_attn_implementation", None) if cfgs else None


@contextlib.contextmanager
def math_sdpa() -> Iterator[None]:
    """Run scaled_dot_product_attention with the math kernel only (it supports double backward)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - old torch
        yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield
