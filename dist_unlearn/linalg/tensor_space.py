"""Local vectors: one flat tensor, or a tuple of per-parameter tensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dist_unlearn.errors import NumericalError
from dist_unlearn.linalg.exact_dot import exact_dot

TensorVector = torch.Tensor | tuple[torch.Tensor, ...]


def _parts(x: TensorVector) -> Sequence[torch.Tensor]:
    return (x,) if isinstance(x, torch.Tensor) else x


def lincomb_tensor(coeffs: Sequence[float], tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_i c_i t_i accumulated in float64 (each term c_i t_i rounded, then added: no fused multiply-add,
    so every element gets the same arithmetic wherever it sits in memory), rounded once to the dtype of the
    first tensor. Zero coefficients are skipped. The engine's workers combine their shards with this too, so
    a sharded and a one-process run produce the same bits."""
    dtype = tensors[0].dtype
    acc = torch.zeros(tensors[0].shape, dtype=torch.float64, device=tensors[0].device)
    for c, t in zip(coeffs, tensors, strict=True):
        if c != 0.0:
            acc.add_(t.to(torch.float64) * float(c))
    return acc.to(dtype)


def random_part(seed: int, index: int, numel: int, kind: str = "normal") -> torch.Tensor:
    """Part ``index`` of a seeded random vector: ``numel`` float64 entries (standard normal or +-1) from a
    generator seeded by (seed, index) alone, so any layout that cuts the vector by parts draws the same
    numbers (a sharded vector's ranks slice the parts they hold)."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(index))
    if kind == "rademacher":
        return torch.randint(0, 2, (numel,), generator=gen).to(torch.float64) * 2 - 1
    return torch.randn(numel, generator=gen, dtype=torch.float64)


class TensorSpace:
    """:class:`~dist_unlearn.linalg.VectorSpace` over local torch tensors.

    A vector is either a tensor (any shape, treated as flat) or a tuple/list of tensors (one per parameter,
    as returned by ``torch.autograd.grad``). Dot products and norms accumulate in float64 whatever the
    storage dtype, so the solver sees float64 scalars.
    """

    def dot(self, x: TensorVector, y: TensorVector) -> float:
        """x . y in float64, reproducibly (:mod:`~dist_unlearn.linalg.exact_dot`: the same value however the
        vector is cut, as the engine's ranks compute it)."""
        px, py = _parts(x), _parts(y)
        if len(px) != len(py):
            raise ValueError(f"dot of vectors with {len(px)} and {len(py)} parts")
        for a, b in zip(px, py, strict=True):
            if a.shape != b.shape:
                raise ValueError(f"dot of tensors with shapes {tuple(a.shape)} and {tuple(b.shape)}")
        return exact_dot(list(zip(px, py, strict=True)))

    def norm(self, x: TensorVector) -> float:
        return max(self.dot(x, x), 0.0) ** 0.5

    def axpy(self, a: float, x: TensorVector, y: TensorVector) -> TensorVector:
        px, py = list(_parts(x)), list(_parts(y))
        if len(px) != len(py):
            raise ValueError(f"axpy of vectors with {len(px)} and {len(py)} parts")
        torch._foreach_add_(py, [xi.to(yi.dtype) for xi, yi in zip(px, py, strict=True)], alpha=float(a))
        return y

    def scale(self, a: float, x: TensorVector) -> TensorVector:
        torch._foreach_mul_(list(_parts(x)), float(a))
        return x

    def lincomb(self, coeffs: Sequence[float], vectors: Sequence[TensorVector]) -> TensorVector:
        """A new vector sum_i coeffs[i] * vectors[i], accumulated in float64 part by part
        (:func:`lincomb_tensor`: the arithmetic of the engine's workers, so both give the same bits)."""
        if len(coeffs) != len(vectors) or not vectors:
            raise ValueError(f"lincomb of {len(coeffs)} coefficients and {len(vectors)} vectors")
        parts = [_parts(v) for v in vectors]
        out = [
            lincomb_tensor([float(c) for c in coeffs], [p[i] for p in parts]) for i in range(len(parts[0]))
        ]
        return out[0] if isinstance(vectors[0], torch.Tensor) else tuple(out)

    def dots(self, x: TensorVector, ys: Sequence[TensorVector]) -> list[float]:
        """[x . y for y in ys], accumulated in float64."""
        return [self.dot(x, y) for y in ys]

    def random_like(self, x: TensorVector, seed: int, kind: str = "normal") -> TensorVector:
        """A new vector shaped like x with seeded standard-normal or Rademacher entries (part i drawn by
        :func:`random_part` from (seed, i): the engine's workers draw their shards of the same vector)."""
        if kind not in ("normal", "rademacher"):
            raise ValueError(f"random_like kind={kind!r}; allowed: 'normal', 'rademacher'")
        out = [
            random_part(seed, i, t.numel(), kind).reshape(t.shape).to(t.dtype).to(t.device)
            for i, t in enumerate(_parts(x))
        ]
        return out[0] if isinstance(x, torch.Tensor) else tuple(out)

    def copy(self, x: TensorVector) -> TensorVector:
        if isinstance(x, torch.Tensor):
            return x.detach().clone()
        return tuple(t.detach().clone() for t in x)

    def zeros_like(self, x: TensorVector) -> TensorVector:
        if isinstance(x, torch.Tensor):
            return torch.zeros_like(x)
        return tuple(torch.zeros_like(t) for t in x)

    def is_finite(self, x: TensorVector) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in _parts(x))

    def release(self, x: TensorVector) -> None:
        return None

    @staticmethod
    def check_finite(x: TensorVector, what: str) -> None:
        """Raise NumericalError naming ``what`` when x has a NaN or inf entry."""
        for t in _parts(x):
            if not bool(torch.isfinite(t).all()):
                raise NumericalError(f"{what} has non-finite entries (NaN or inf); it must be finite.")
