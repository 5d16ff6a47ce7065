"""Small helpers shared by the HVP modes: finiteness checks and gradients with unused parameters."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dist_unlearn.errors import NumericalError


def check_loss(loss: torch.Tensor, where: str) -> torch.Tensor:
    """Raise unless ``loss`` is a finite scalar tensor."""
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise NumericalError(
            f"loss_fn returned {shape} for {where}; it must return a scalar tensor (the batch mean)."
        )
    if not bool(torch.isfinite(loss.detach())):
        raise NumericalError(
            f"the loss is {float(loss.detach())} (non-finite) on {where}; it must be finite."
        )
    return loss.reshape(())


def fill_none(grads: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Replace the None entries that ``autograd.grad(allow_unused=True)`` returns by zeros."""
    return tuple(torch.zeros_like(p) if g is None else g for g, p in zip(grads, like, strict=True))


def accumulate_dtype(p: torch.Tensor) -> torch.dtype:
    """fp32 or wider: sums over chunks, master weights and returned vectors use this dtype."""
    return torch.promote_types(p.dtype, torch.float32)
