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
        px, py = list(_parts(x)), list(_parts(y))
        if len(px) != len(py):
            raise ValueError(f"axpy of vectors with {len(px)} and {len(py)} parts")
        torch._foreach_add_(py, [xi.to(yi.dtype) for xi, yi in zip(px, py, strict=True)], alpha=float(a))
        return y

    def scale(self, a: float, x: TensorVector) -> TensorVector:
        torch._foreach_mul_(list(_parts(x)), float(a))
        return x

    def lincomb(self, coeffs: Sequence[float], vectors: Sequence[TensorVector]) -> TensorVector:
        """A new vector sum_i coeffs[i] * vectors[i] (fused per-parameter kernels, one pass per term)."""
        if len(coeffs) != len(vectors) or not vectors:
            raise ValueError(f"lincomb of {len(coeffs)} coefficients and {len(vectors)} vectors")
        out = torch._foreach_mul(list(_parts(vectors[0])), float(coeffs[0]))
        for c, v in zip(coeffs[1:], vectors[1:], strict=True):
            if c != 0.0:
                torch._foreach_add_(out, list(_parts(v)), alpha=float(c))
        return out[0] if isinstance(vectors[0], torch.Tensor) else tuple(out)

    def dots(self, x: TensorVector, ys: Sequence[TensorVector]) -> list[float]:
        """[x . y for y in ys], accumulated in float64."""
        return [self.dot(x, y) for y in ys]

    def random_like(self, x: TensorVector, seed: int, kind: str = "normal") -> TensorVector:
        """A new vector shaped like x with seeded standard-normal or Rademacher entries."""
        if kind not in ("normal", "rademacher"):
            raise ValueError(f"random_like kind={kind!r}; allowed: 'normal', 'rademacher'")
        gen = torch.Generator().manual_seed(int(seed))
        out = []
        for t in _parts(x):
            if kind == "rademacher":
                r = torch.randint(0, 2, t.shape, generator=gen).to(t.dtype) * 2 - 1
            else:
                r = torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)
            out.append(r.to(t.device))
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
