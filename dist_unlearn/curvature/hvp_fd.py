"""Finite-difference Hessian-vector products from two gradients (for ZeRO-3, where double backward fails).

Central difference  H v ~= (g(w + eps v) - g(w - eps v)) / (2 eps). With h = eps |v| the distance the weights
move, the error is O(h^2) from truncation (fourth derivatives of the loss along v) plus O(u G / h) from the
rounding of the two gradients (u = unit roundoff of the compute dtype, G the size of the per-example terms
the gradient sums). The rule, used by the in-process oracle and by every engine worker alike
(:func:`fd_epsilon`), is

    h = u^(1/3) max(1, rms(w)),      eps = h / |v|,      rms(w) = |w| / sqrt(n)

(n trainable parameters). It was chosen on a measured error curve (``benchmarks/fd_error_curve.py``: float32
FD vs the float64 exact H v by double backward, h from 1e-7 to 1, on two MLPs and two GPT-2s built from
configs): for the directions cure_newton applies H to (the gradient and its Lanczos vectors) it gave the
smallest worst-case error of the rules tried, <= 3.2e-3 relative, against 0.34 for the older in-process rule
h = u^(1/3) (1 + |w|), whose step grows with sqrt(n) and overshoots badly on concentrated directions of a
transformer. Where the best h of a direction lies differs by 2.5 decades between directions (1e-3 to 0.2), so
no fixed rule is optimal everywhere: random or one-tensor directions get up to 5e-2 (see the JSON). Rounding
differences between a sharded and a one-process run (the gradient summed in another order) change the FD
result by ~1e-5 relative at this h: small against its error, so runs with the same rule agree.

Perturbations are formed in fp32-or-wider master weights and the weights are restored bit-exactly from the
master copy afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from dist_unlearn.errors import NumericalError


def compute_dtype(params: Sequence[torch.Tensor]) -> torch.dtype:
    """The least precise parameter dtype: gradients carry its rounding error."""
    return max((p.dtype for p in params), key=lambda d: torch.finfo(d).eps)


def fd_epsilon(dtype: torch.dtype, w_norm: float, v_norm: float, num_params: int) -> float:
    """The central-difference step eps = u^(1/3) max(1, |w| / sqrt(n)) / |v| (module docstring).

    Args:
        dtype: compute dtype (its unit roundoff u).
        w_norm: |w| over the n trainable parameters (all ranks: the all-reduced norm).
        v_norm: |v| (all ranks).
        num_params: n.
    """
    if not v_norm > 0:
        raise NumericalError(f"finite-difference HVP needs a nonzero direction; |v| = {v_norm}.")
    rms = w_norm / math.sqrt(max(int(num_params), 1))
    return quantize_step(perturbation_size(dtype, rms) / v_norm)


def quantize_step(eps: float) -> float:
    """eps rounded to a float32 value: |w| and |v| summed in another order (a sharded run) differ in their
    last float64 bits; after this rounding both runs perturb the weights by the same step."""
    return float(torch.tensor(eps, dtype=torch.float32))


def perturbation_size(dtype: torch.dtype, w_rms: float) -> float:
    """h = u^(1/3) max(1, rms(w)): how far the weights move in each direction."""
    return float(torch.finfo(dtype).eps) ** (1.0 / 3.0) * max(1.0, float(w_rms))


def _norm(xs: Sequence[torch.Tensor]) -> float:
    return float(sum(float(torch.linalg.vector_norm(x.double())) ** 2 for x in xs)) ** 0.5


@torch.no_grad()
def _set(
    params: Sequence[torch.Tensor], base: Sequence[torch.Tensor], v: Sequence[torch.Tensor], step: float
) -> None:
    for p, b, vi in zip(params, base, v, strict=True):
        p.copy_((b + step * vi.to(b.dtype)).to(p.dtype))


def fd_hvp(
    gradient: Callable[[], Sequence[torch.Tensor]],
    params: Sequence[torch.Tensor],
    v: Sequence[torch.Tensor],
    *,
    master: Sequence[torch.Tensor] | None = None,
    eps: float | None = None,
) -> tuple[tuple[torch.Tensor, ...], float]:
    """Central-difference H v.

    Args:
        gradient: returns grad L at the current parameter values (fp32-or-wider tensors; one per parameter,
            or any fixed set of tensors, e.g. this rank's shard of the gradient).
        params: the parameters, perturbed in place.
        v: direction, one tensor per parameter (shaped like ``params``).
        master: fp32-or-wider master copy of the weights (the current values); cloned from ``params`` if None.
        eps: step; default :func:`fd_epsilon` from the compute dtype, |w|, |v| and n of ``params`` (a sharded
            caller computes it from all-reduced norms and passes it).

    Returns:
        (H v, eps used). The parameters hold exactly their previous values on return, even on error.
    """
    if master is None:
        master = [p.detach().clone() for p in params]  # same dtype: copying back is bit-exact
    v_norm = _norm(v)
    if v_norm == 0.0 and eps is None:
        return tuple(torch.zeros_like(m) for m in master), 0.0
    if eps is None:
        n = sum(p.numel() for p in params)
        eps = fd_epsilon(compute_dtype(params), _norm(master), v_norm, n)
    try:
        _set(params, master, v, eps)
        g_plus = gradient()
        _set(params, master, v, -eps)
        g_minus = gradient()
    finally:
        _set(params, master, v, 0.0)
    hv = tuple((gp - gm).div_(2.0 * eps) for gp, gm in zip(g_plus, g_minus, strict=True))
    return hv, eps
