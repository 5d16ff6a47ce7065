"""Dot products whose float64 value does not depend on how the vector is split or summed.

A float64 sum depends on the order of its additions in its last bits, and on flat problems (a model trained
to zero loss) the Krylov solve amplifies those bits: a sharded run and a one-process run then drift apart.
The dot products of the solvers are therefore computed reproducibly (binned summation, after Demmel and
Nguyen, "Fast reproducible floating-point summation", 2013):

- the products p_i = x_i y_i of float32 (or float64) entries are formed in float64 (exact for float32);
- with M = max |p_i| over the whole vector and n its length, level k rounds the remainder r to a multiple of
  Q_k = 2^(e_k - 53) (q = (r + s_k) - s_k, s_k = 1.5 2^(e_k - 1)), where 2^(e_1) >= 2^L M, L = ceil(log2 n),
  and e_{k+1} = e_k - 54 + L. Every q and every partial sum of them is a multiple of Q_k below 2^(e_k), so
  the level sums S_k are exact in any order and any split (ranks add their S_k exactly too);
- the dot is (S_1 + S_2) + S_3: three levels keep 3 (54 - L) bits below the largest product, ~70 bits at a
  billion entries, far more than a plain float64 sum keeps.

M must be the global maximum (one max all-reduce before the sums on a sharded vector). Vectors are read in
slices of ``CHUNK`` entries (the level sums of slices add exactly), so the float64 temporaries stay small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

LEVELS = 3
CHUNK = 1 << 20
"""Entries per slice: the float64 products and remainders of one slice (a few 8 MiB buffers)."""


def products(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x_i y_i in float64, flat."""
    return x.reshape(-1).to(torch.float64) * y.reshape(-1).to(torch.float64)


def level_sums(p: torch.Tensor, max_abs: float, n: int) -> torch.Tensor:
    """The exact level sums (S_1, S_2, S_3) of the products ``p`` (float64), for the global max |p|
    ``max_abs`` and global length ``n`` (module docstring). NaN sums for a non-finite ``max_abs``."""
    out = torch.zeros(LEVELS, dtype=torch.float64)
    if not math.isfinite(max_abs):
        return out.fill_(math.nan)
    if max_abs == 0.0 or p.numel() == 0:
        return out
    spread = max(2, math.ceil(math.log2(max(int(n), 1))))
    e = math.frexp(max_abs)[1] + spread  # 2^e >= 2^spread max|p| >= n max|p|
    r = p
    for k in range(LEVELS):
        if e - 1 < -1000:  # below the float64 range: the rest is zero to this precision
            break
        s = 1.5 * 2.0 ** (e - 1)
        q = (r + s) - s
        out[k] = q.sum()
        r = r - q
        e = e - 54 + spread
    return out


def combine_levels(sums: torch.Tensor) -> float:
    """(S_1 + S_2) + S_3: the dot, in a fixed order."""
    return float((sums[0] + sums[1]) + sums[2])


def max_abs_product(x: torch.Tensor, y: torch.Tensor) -> float:
    """max_i |x_i y_i| (float64), slice by slice; NaN if a product is NaN."""
    fx, fy = x.reshape(-1), y.reshape(-1)
    out = 0.0
    for s in range(0, fx.numel(), CHUNK):
        m = float(products(fx[s : s + CHUNK], fy[s : s + CHUNK]).abs().max())
        if not m <= out:  # larger, or NaN
            out = m
            if math.isnan(m):
                break
    return out


def dot_level_sums(x: torch.Tensor, y: torch.Tensor, max_abs: float, n: int) -> torch.Tensor:
    """:func:`level_sums` of the products x_i y_i, slice by slice."""
    fx, fy = x.reshape(-1), y.reshape(-1)
    total = torch.zeros(LEVELS, dtype=torch.float64)
    for s in range(0, fx.numel(), CHUNK):
        total += level_sums(products(fx[s : s + CHUNK], fy[s : s + CHUNK]), max_abs, n)
    return total


def exact_dot(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """sum over the (x, y) pairs of x . y, reproducibly (one vector cut into parts, all held here)."""
    n = sum(x.numel() for x, _ in pairs)
    max_abs = 0.0
    for x, y in pairs:
        m = max_abs_product(x, y)
        if not m <= max_abs:
            max_abs = m
    total = torch.zeros(LEVELS, dtype=torch.float64)
    for x, y in pairs:
        total += dot_level_sums(x, y, max_abs, n)
    return combine_levels(total)
