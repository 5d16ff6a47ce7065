"""The vector-space protocol shared by local and sharded vectors."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

Vector = Any
"""An opaque vector: a tensor, a tuple of tensors, or a handle to remote shards."""


@runtime_checkable
class VectorSpace(Protocol):
    """Operations on opaque vectors. Scalars come back as Python floats (accumulated in float64).

    In-place operations return the vector they modified so calls can be chained; they never change the
    identity of a handle.
    """

    def dot(self, x: Vector, y: Vector) -> float:
        """Return x . y."""
        ...

    def norm(self, x: Vector) -> float:
        """Return the Euclidean norm |x|."""
        ...

    def axpy(self, a: float, x: Vector, y: Vector) -> Vector:
        """y <- a x + y, in place; returns y."""
        ...

    def scale(self, a: float, x: Vector) -> Vector:
        """x <- a x, in place; returns x."""
        ...

    def copy(self, x: Vector) -> Vector:
        """Return a new vector equal to x."""
        ...

    def zeros_like(self, x: Vector) -> Vector:
        """Return a new zero vector shaped like x."""
        ...

    def is_finite(self, x: Vector) -> bool:
        """Return True when every entry of x is finite."""
        ...

    def release(self, x: Vector) -> None:
        """Free the storage of x (a no-op for local tensors, frees remote shards for handles)."""
        ...
