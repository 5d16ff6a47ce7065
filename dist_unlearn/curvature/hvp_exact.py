"""Exact Hessian-vector products by double backward (Pearlmutter's R-operator through reverse mode).

For a batch loss l(w), Hv = d/dw <grad_w l(w), v>: one backward with ``create_graph=True`` gives g(w) as a
differentiable function, a second backward of <g, v> gives H v. Cost: about two gradients; memory: the
graph of the first backward. Needs twice-differentiable kernels (see :mod:`.attention`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from dist_unlearn.curvature._common import check_loss, fill_none


def exact_hvp_batch(
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    model: torch.nn.Module,
    batch: Any,
    params: Sequence[torch.Tensor],
    v: Sequence[torch.Tensor],
    where: str = "a batch",
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """(l(w), nabla^2 l(w) v) for one batch; ``v`` has one tensor per parameter.

    Returns:
        The detached batch loss and H v (one tensor per parameter, in the parameter dtype).
    """
    loss = check_loss(loss_fn(model, batch), where)
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    pairs = [(g, vi) for g, vi in zip(grads, v, strict=True) if g is not None and g.requires_grad]
    if not pairs:  # the loss is linear in w (or does not depend on it): H = 0
        return loss.detach(), tuple(torch.zeros_like(p) for p in params)
    hv = torch.autograd.grad(
        [g for g, _ in pairs], params, grad_outputs=[vi.to(g.dtype) for g, vi in pairs], allow_unused=True
    )
    return loss.detach(), fill_none(hv, params)
