"""The curvature-oracle protocol: what every second-order method needs from a model and its retain data."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from dist_unlearn.linalg import Vector, VectorSpace


@runtime_checkable
class CurvatureOracle(Protocol):
    """Loss, gradient and Hessian-vector products of the retain loss L_r(w) at the current weights w.

    L_r(w) = (1/|S|) sum_{i in S} loss(w; x_i), S the retain set, or the mini-batch chosen by
    :meth:`resample` for the stochastic variant. H = nabla^2 L_r(w) (or the Gauss-Newton matrix, by option).
    Implementations are deterministic: dropout off, the same sample until the next :meth:`resample`.
    Vectors belong to :attr:`space`; every returned vector is new (the caller may modify or release it).
    """

    space: VectorSpace
    counters: dict[str, int]
    """Running counts, at least ``{"gradients": n, "hvps": n, "losses": n}``."""

    def loss(self) -> float:
        """L_r(w) on the current sample."""
        ...

    def loss_and_gradient(self) -> tuple[float, Vector]:
        """(L_r(w), grad L_r(w)) on the current sample, in one pass."""
        ...

    def gradient(self) -> Vector:
        """grad L_r(w) on the current sample."""
        ...

    def hvp(self, v: Vector) -> Vector:
        """H v on the current (HVP) sample."""
        ...

    def apply_update(self, d: Vector, scale: float = 1.0) -> None:
        """w <- w + scale * d."""
        ...

    def snapshot(self) -> Any:
        """An opaque copy of the current weights, for :meth:`restore` (step rejection, NaN recovery)."""
        ...

    def restore(self, snap: Any) -> None:
        """Set the weights back to a snapshot taken earlier."""
        ...

    def resample(self, seed: int | None) -> None:
        """Choose the gradient/HVP mini-batches for the next solve (no-op for full-batch oracles)."""
        ...
