"""Vector helpers built on the VectorSpace protocol: the only way the solvers touch vectors.

Every helper here costs a known number of vector operations (each one is a remote call when vectors are shards
on Ray workers), and none indexes into a vector. ``space.lincomb`` is used when the space offers it.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Sequence
from typing import Any

from dist_unlearn.errors import ConfigError, NumericalError
from dist_unlearn.linalg import TensorSpace, Vector, VectorSpace

Matvec = Callable[[Vector], Vector]


def resolve_space(space: VectorSpace | None) -> VectorSpace:
    """Return ``space``, or a :class:`TensorSpace` when it is None."""
    return TensorSpace() if space is None else space


def combine(space: VectorSpace, coeffs: Sequence[float], vectors: Sequence[Vector]) -> Vector:
    """Return a NEW vector ``sum_i coeffs[i] * vectors[i]`` (one op with ``lincomb``, else copy + axpys)."""
    coeffs = [float(c) for c in coeffs]
    lincomb = getattr(space, "lincomb", None)
    if lincomb is not None:
        return lincomb(coeffs, list(vectors))
    out = space.copy(vectors[0])
    if coeffs[0] != 1.0:
        space.scale(coeffs[0], out)
    for c, v in zip(coeffs[1:], vectors[1:], strict=True):
        if c != 0.0:
            space.axpy(c, v, out)
    return out


def many_dots(space: VectorSpace, x: Vector, ys: Sequence[Vector]) -> list[float]:
    """``[x . y for y in ys]``: one op with the optional ``space.dots(x, ys)``, else one dot per y."""
    dots = getattr(space, "dots", None)
    if dots is not None:
        return [float(v) for v in dots(x, list(ys))]
    return [float(space.dot(x, y)) for y in ys]


def subtract(space: VectorSpace, w: Vector, coeffs: Sequence[float], vectors: Sequence[Vector]) -> Vector:
    """Return ``w - sum_i coeffs[i] * vectors[i]``: in place (axpy) or one ``lincomb`` (w released)."""
    if getattr(space, "lincomb", None) is not None:
        out = space.lincomb([1.0, *(-float(c) for c in coeffs)], [w, *vectors])
        space.release(w)
        return out
    for c, v in zip(coeffs, vectors, strict=True):
        if c != 0.0:
            space.axpy(-float(c), v, w)
    return w


def release_all(space: VectorSpace, vectors: Sequence[Vector | None]) -> None:
    """Release every vector that is not None (frees remote shards; a no-op locally)."""
    for v in vectors:
        if v is not None:
            space.release(v)


def check_positive(name: str, value: Any, *, integer: bool = False) -> float:
    """Return ``value`` as a float (or int) after checking it is a finite number > 0, else ConfigError."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    try:
        number = float(value)
    except (TypeError, ValueError):
        ok = False
        number = math.nan
    if integer and ok and number != int(number):
        ok = False
    if not ok or not math.isfinite(number) or number <= 0:
        kind = "an integer >= 1" if integer else "a finite number > 0"
        raise ConfigError(f"{name}={value!r} is not allowed; {name} must be {kind}.")
    return int(number) if integer else number


def vector_norm(space: VectorSpace, x: Vector, what: str) -> float:
    """|x|; NumericalError when it is NaN/inf, ConfigError when ``x`` is not a vector of ``space``."""
    try:
        value = float(space.norm(x))
    except (TypeError, AttributeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{what} is not a vector of {type(space).__name__}: {exc}") from exc
    if not math.isfinite(value):
        raise NumericalError(f"{what} has non-finite entries (norm {value}); it must be finite.")
    return value


def checked_dot(space: VectorSpace, x: Vector, y: Vector, what: str) -> float:
    """``x . y`` for a matvec output ``y``: a shape mismatch is a ConfigError, NaN/inf a NumericalError.

    A dot product is NaN or inf whenever ``y`` has a NaN or inf entry, so this also checks ``y`` for free.
    """
    try:
        value = float(space.dot(x, y))
    except (TypeError, AttributeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{what} does not match the shape/structure of the input vector: {exc}") from exc
    if not math.isfinite(value):
        raise NumericalError(
            f"{what} has non-finite entries (NaN or inf); the matvec must return finite values."
        )
    return value


class TimedMatvec:
    """Wrap a matvec, counting calls and the wall time spent inside it."""

    def __init__(self, matvec: Matvec) -> None:
        if not callable(matvec):
            raise ConfigError(f"matvec={matvec!r} is not callable; pass a function v -> H v.")
        self.fn = matvec
        self.calls = 0
        self.time = 0.0

    def __call__(self, v: Vector) -> Vector:
        start = time.perf_counter()
        out = self.fn(v)
        self.time += time.perf_counter() - start
        self.calls += 1
        return out


def fused_lanczos_step(matvec: Matvec) -> Callable[..., dict] | None:
    """The fused Lanczos iteration offered by the matvec's owner, or None.

    A matvec that is the ``hvp`` method of an object with a ``lanczos_step(q, q_prev, beta_prev, others,
    tnorm, breakdown_tol)`` method (the sharded :class:`~dist_unlearn.distributed.RayOracle`) lets
    :class:`~dist_unlearn.solvers.LanczosProcess` do a whole iteration (H q, the dots, the linear
    combinations) in one call. Wrapped in :class:`TimedMatvec`, the call is counted and timed as one matvec.
    """
    timed = matvec if isinstance(matvec, TimedMatvec) else None
    fn = timed.fn if timed is not None else matvec
    owner = getattr(fn, "__self__", None)
    step = getattr(owner, "lanczos_step", None) if getattr(fn, "__name__", "") == "hvp" else None
    if step is None:
        return None
    if timed is None:
        return step

    def counted(*args: Any) -> dict:
        start = time.perf_counter()
        out = step(*args)
        timed.time += time.perf_counter() - start
        timed.calls += 1
        return out

    return counted


def random_like(space: VectorSpace, x: Vector, seed: int, kind: str = "normal") -> Vector:
    """A new random vector shaped like ``x`` (standard normal or Rademacher entries).

    Uses ``space.random_like(x, seed=..., kind=...)`` when the space offers it (a sharded space draws
    each shard     on its worker); for :class:`TensorSpace` draws with a seeded torch generator.
    """
    fn = getattr(space, "random_like", None)
    if fn is not None:
        return fn(x, seed=seed, kind=kind)
    if isinstance(space, TensorSpace):
        import torch

        gen = torch.Generator().manual_seed(int(seed))
        parts = (x,) if isinstance(x, torch.Tensor) else tuple(x)
        out = []
        for t in parts:
            if kind == "rademacher":
                r = torch.randint(0, 2, t.shape, generator=gen).to(t.dtype) * 2 - 1
            else:
                r = torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)
            out.append(r.to(t.device))
        return out[0] if isinstance(x, torch.Tensor) else tuple(out)
    raise ConfigError(
        f"{type(space).__name__} has no random_like(x, seed=, kind=) method; random start vectors (hard-case "
        "probe, spectral density probes) need it. Pass explicit start vectors or add the method to the space."
    )
