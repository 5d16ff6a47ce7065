"""Local vectors: one flat tensor, or a tuple of per-parameter tensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dist_unlearn.errors import NumericalError

TensorVector = torch.Tensor | tuple[torch.Tensor, ...]


def _parts(x: TensorVector) -> Sequence[torch.Tensor]:
    return (x,) if isinstance(x, torch.Tensor) else x


class TensorSpace:
    """:class:`~dist_unlearn.linalg.VectorSpace` over local torch tensors.

    A vector is either a tensor (any shape, treated as flat) or a tuple/list of tensors (one per parameter,
    as returned by ``torch.autograd.grad``). Dot products and norms accumulate in float64 whatever the
    storage dtype, so the solver sees float64 scalars.
    """

    def dot(self, x: TensorVector, y: TensorVector) -> float:
        px, py = _parts(x), _parts(y)
        if len(px) != len(py):
            raise ValueError(f"dot of vectors with {len(px)} and {len(py)} parts")
        total = 0.0
        for a, b in zip(px, py, strict=True):
            if a.shape != b.shape:
                raise ValueError(f"dot of tensors with shapes {tuple(a.shape)} and {tuple(b.shape)}")
            total += float(torch.dot(a.reshape(-1).double(), b.reshape(-1).double()))
        return total

    def norm(self, x: TensorVector) -> float:
        return float(sum(float(torch.linalg.vector_norm(a.double())) ** 2 for a in _parts(x))) ** 0.5

    def axpy(self, a: float, x: TensorVector, y: TensorVector) -> TensorVector:
        for xi, yi in zip(_parts(x), _parts(y), strict=True):
            yi.add_(xi.to(yi.dtype), alpha=float(a))
        return y

    def scale(self, a: float, x: TensorVector) -> TensorVector:
        for xi in _parts(x):
            xi.mul_(float(a))
        return x

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
