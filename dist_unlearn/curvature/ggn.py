"""Generalised Gauss-Newton products  G v = J^T H_out J v.

For a loss l(w) = ell(f(w)) with outputs f (logits), J = df/dw and H_out = d^2 ell / df^2. G drops the term
sum_k (d ell/d f_k) nabla^2 f_k of the Hessian, so it is positive semi-definite when ell is convex in the
outputs (cross-entropy, squared error). Per batch:

1. J v by the double-backward trick: u -> J^T u is linear, so d/du <J^T u, v> = J v.
2. H_out (J v) by double backward through ell only (cheap: outputs are small next to the weights).
3. J^T (H_out J v) by one ordinary backward.

The loss object must expose ``outputs(model, batch) -> tensor`` and ``from_outputs(outputs, batch) -> scalar``
(see :mod:`dist_unlearn.models.losses`), consistent with ``loss(model, batch)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from dist_unlearn.curvature._common import check_loss, fill_none
from dist_unlearn.errors import ConfigError


def check_ggn_loss(loss_fn: Any) -> None:
    """Raise ConfigError unless ``loss_fn`` exposes ``outputs`` and ``from_outputs``."""
    missing = [m for m in ("outputs", "from_outputs") if not callable(getattr(loss_fn, m, None))]
    if missing:
        raise ConfigError(
            f"hvp='ggn' needs a loss with .outputs(model, batch) and .from_outputs(outputs, batch); "
            f"{type(loss_fn).__name__} lacks {', '.join(missing)}. Use hvp='exact' or 'fd', or a loss from "
            "dist_unlearn.models (ClassificationLoss, CausalLMLoss)."
        )


def ggn_vp_batch(
    loss_fn: Any,
    model: torch.nn.Module,
    batch: Any,
    params: Sequence[torch.Tensor],
    v: Sequence[torch.Tensor],
    where: str = "a batch",
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """(l(w), J^T H_out J v) for one batch."""
    out = loss_fn.outputs(model, batch)
    o = out.detach().requires_grad_(True)
    loss = check_loss(loss_fn.from_outputs(o, batch), where)
    u = torch.zeros_like(out, requires_grad=True)
    jtu = torch.autograd.grad(out, params, grad_outputs=u, create_graph=True, allow_unused=True)
    pairs = [(g, vi) for g, vi in zip(jtu, v, strict=True) if g is not None]
    if not pairs:
        return loss.detach(), tuple(torch.zeros_like(p) for p in params)
    (jv,) = torch.autograd.grad(
        [g for g, _ in pairs],
        u,
        grad_outputs=[vi.to(g.dtype) for g, vi in pairs],
        retain_graph=True,
        allow_unused=True,
    )
    if jv is None:
        jv = torch.zeros_like(out)
    (go,) = torch.autograd.grad(loss, o, create_graph=True)
    if not go.requires_grad:  # ell linear in the outputs
        return loss.detach(), tuple(torch.zeros_like(p) for p in params)
    (hjv,) = torch.autograd.grad(go, o, grad_outputs=jv.detach())
    res = torch.autograd.grad(out, params, grad_outputs=hjv, allow_unused=True)
    return loss.detach(), fill_none(res, params)
