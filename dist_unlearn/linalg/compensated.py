"""Elementwise sums in double-double (float64 hi + lo), so that the rounded result does not depend on the
order of the terms.

A gradient is a sum over micro-batches; a sharded run adds the same terms in another order (each rank its
own, then the ranks), and a float64 sum keeps the order in its last bits. Where the terms cancel (a model at
zero loss: large per-micro-batch gradients, a small mean) those bits reach float32 and a sharded run's
gradient differs from a one-process run's in a few entries by one float32 ulp, which a flat problem then
amplifies. Knuth's TwoSum keeps the rounding error of every addition: s = a + b, e = (a - (s - b')) +
(b - b') with b' = s - a, so hi + lo carries the sum to about 2^-106 of the terms' size, and rounding it to
float32 gives the same value for any order (except where the exact sum lies within that distance of a
float32 rounding boundary).
"""

from __future__ import annotations

import torch


def two_sum(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, e) with s = fl(a + b) and s + e = a + b exactly (elementwise, float64)."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


class Compensated:
    """A double-double accumulator of float64 tensors of one shape."""

    def __init__(self, shape: tuple[int, ...] | torch.Size, device: torch.device | str | None = None) -> None:
        self.hi = torch.zeros(shape, dtype=torch.float64, device=device)
        self.lo = torch.zeros(shape, dtype=torch.float64, device=device)

    def add_(self, t: torch.Tensor) -> Compensated:
        """hi + lo += t (t float64, the accumulator's shape)."""
        self.hi, e = two_sum(self.hi, t)
        self.lo.add_(e)
        return self

    def add_at_(self, start: int, t: torch.Tensor) -> Compensated:
        """hi + lo += t on the flat entries [start, start + len(t)) (a 1-d accumulator)."""
        end = start + t.numel()
        s, e = two_sum(self.hi[start:end], t)
        self.hi[start:end] = s
        self.lo[start:end].add_(e)
        return self

    def merge_(self, hi: torch.Tensor, lo: torch.Tensor) -> Compensated:
        """hi + lo += (another accumulator's hi, lo)."""
        self.hi, e = two_sum(self.hi, hi)
        self.lo.add_(e).add_(lo)
        return self

    def value(self) -> torch.Tensor:
        """hi + lo as float64."""
        return self.hi + self.lo

    def rounded(self, dtype: torch.dtype) -> torch.Tensor:
        """The sum rounded to ``dtype``."""
        return self.value().to(dtype)
