"""Finite-difference Hessian-vector products from two gradients (for ZeRO-3, where double backward fails).

Central difference  H v ~= (g(w + eps v) - g(w - eps v)) / (2 eps),  error O(eps^2 |D^3 L| |v|^3) from
truncation plus O(u |g| / eps) from rounding of the gradients (u = unit roundoff of the compute dtype).
The two balance at eps ~ u^(1/3) in relative terms, so

    eps = u^(1/3) * (1 + |w|) / |v|

(the perturbation is a fraction u^(1/3) of the weight norm). Perturbations are formed in fp32-or-wider master
weights and the weights are restored bit-exactly from the master copy afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from dist_unlearn.errors import NumericalError


def compute_dtype(params: Sequence[torch.Tensor]) -> torch.dtype:
    """The least precise parameter dtype: gradients carry its rounding error."""
    return max((p.dtype for p in params), key=lambda d: torch.finfo(d).eps)


def fd_epsilon(dtype: torch.dtype, w_norm: float, v_norm: float) -> float:
    """Central-difference step  u^(1/3) (1 + |w|) / |v|  for unit roundoff u of ``dtype``."""
    if not v_norm > 0:
        raise NumericalError(f"finite-difference HVP needs a nonzero direction; |v| = {v_norm}.")
    return float(torch.finfo(dtype).eps) ** (1.0 / 3.0) * (1.0 + w_norm) / v_norm


def _norm(xs: Sequence[torch.Tensor]) -> float:
    return float(sum(float(torch.linalg.vector_norm(x.double())) ** 2 for x in xs)) ** 0.5


@torch.no_grad()
def _set(
    params: Sequence[torch.Tensor], base: Sequence[torch.Tensor], v: Sequence[torch.Tensor], step: float
) -> None:
    for p, b, vi in zip(params, base, v, strict=True):
        p.copy_((b + step * vi.to(b.dtype)).to(p.dtype))


def fd_hvp(
    gradient: Callable[[], tuple[torch.Tensor, ...]],
    params: Sequence[torch.Tensor],
    v: Sequence[torch.Tensor],
    *,
    master: Sequence[torch.Tensor] | None = None,
    eps: float | None = None,
) -> tuple[tuple[torch.Tensor, ...], float]:
    """Central-difference H v.

    Args:
        gradient: returns grad L at the current parameter values (fp32-or-wider tensors, one per parameter).
        params: the parameters, perturbed in place.
        v: direction, one tensor per parameter.
        master: fp32-or-wider master copy of the weights (the current values); cloned from ``params`` if None.
        eps: step; default :func:`fd_epsilon` from the compute dtype and |w|, |v|.

    Returns:
        (H v, eps used). The parameters hold exactly their previous values on return, even on error.
    """
    if master is None:
        master = [p.detach().clone() for p in params]  # same dtype: copying back is bit-exact
    v_norm = _norm(v)
    if v_norm == 0.0:
        return tuple(torch.zeros_like(m) for m in master), 0.0
    if eps is None:
        eps = fd_epsilon(compute_dtype(params), _norm(master), v_norm)
    try:
        _set(params, master, v, eps)
        g_plus = gradient()
        _set(params, master, v, -eps)
        g_minus = gradient()
    finally:
        _set(params, master, v, 0.0)
    hv = tuple((gp - gm).div_(2.0 * eps) for gp, gm in zip(g_plus, g_minus, strict=True))
    return hv, eps
