"""Result objects of the solvers (scipy ``OptimizeResult`` style: named fields, a status message, counters).

Solvers never print and never return bare tuples (except the two spectrum helpers whose contract is a pair).
Scalars are Python floats; ``alphas``/``betas``/``coefficients`` are lists of floats, so a result is cheap to
pickle and send between processes. Vectors (``step``, ``basis``) are vectors of the solver's space.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from dist_unlearn.linalg import Vector


class _Result:
    """Dict-like read access (``res["step"]``, ``res.keys()``) as in ``scipy.optimize.OptimizeResult``."""

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self)]  # type: ignore[arg-type]

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name in ("step", "basis"):
                value = "<vector>" if value is not None else None
            elif isinstance(value, list) and len(value) > 6:
                value = f"[{len(value)} values]"
            shown.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"


@dataclass(repr=False)
class LanczosResult(_Result):
    """Output of :func:`~dist_unlearn.solvers.lanczos`.

    With k = ``iterations``: ``T = tridiag(betas[:k-1], alphas, betas[:k-1])`` is ``Q^T H Q`` and
    ``H Q = Q T + betas[k-1] q_{k+1} e_k^T``; ``betas[k-1]`` is (near) zero when ``breakdown`` is True.
    """

    alphas: list[float]
    betas: list[float]
    basis: list[Vector] | None
    breakdown: bool
    iterations: int
    hvps: int = 0
    matvec_time: float = 0.0
    solver_time: float = 0.0
    message: str = ""


@dataclass(repr=False)
class CubicResult(_Result):
    """Solution of ``min_d g.d + 1/2 d.H d + (M/6)|d|^3`` (Krylov or gradient descent).

    Attributes:
        step: the minimiser d (a NEW vector of the space).
        multiplier: lambda = (M/2)|d|, with (H + lambda I) d = -g at the exact solution.
        step_norm: |d|.
        model_value: m(d) (exact for the returned Krylov iterate, computed from float64 scalars).
        iterations: Lanczos (or gradient-descent) iterations.
        hard_case: True when the minimiser has lambda = -lambda_min and a leftmost-eigenvector component.
        converged: True when residual <= tol (or Lanczos found an invariant subspace).
        hvps: matvec calls, all passes included.
        residual: |grad m(d)| / |g| (Krylov: |beta_k y_k| / |g|).
        message: why the solver stopped.
        coefficients: y with d = Q y in the Lanczos basis started at g (empty for gradient descent).
        alphas, betas: the Lanczos scalars of that basis.
        matvec_time: seconds inside matvec; solver_time: seconds of the whole call.
        history: (hvps so far, model value) after each iteration whose small problem was solved (Krylov
            skips the solve while the residual is clearly above tol; with a callback, every iteration).
    """

    step: Vector
    multiplier: float
    step_norm: float
    model_value: float
    iterations: int
    hard_case: bool
    converged: bool
    hvps: int = 0
    residual: float = 0.0
    message: str = ""
    coefficients: list[float] = field(default_factory=list)
    alphas: list[float] = field(default_factory=list)
    betas: list[float] = field(default_factory=list)
    matvec_time: float = 0.0
    solver_time: float = 0.0
    history: list[tuple[int, float]] = field(default_factory=list)
    krylov: Any = None
    """The kept Lanczos space (``keep_krylov=True``), a :class:`~dist_unlearn.solvers.resolve.KrylovSpace`."""

    @property
    def overhead_fraction(self) -> float:
        """Share of the wall time spent outside matvec (solver overhead)."""
        return 0.0 if self.solver_time <= 0 else max(0.0, 1.0 - self.matvec_time / self.solver_time)


@dataclass(repr=False)
class NewtonResult(_Result):
    """Output of the Newton baselines (damped / pseudo-inverse).

    ``model_value`` is the quadratic model g.d + 1/2 d.H d; ``eigenvalues`` are the Ritz values used
    (pinv) or all Ritz values of T (damped); ``damping`` is the shift added to H (0 for pinv).
    """

    step: Vector
    step_norm: float
    model_value: float
    iterations: int
    hvps: int
    converged: bool
    residual: float = 0.0
    damping: float = 0.0
    message: str = ""
    coefficients: list[float] = field(default_factory=list)
    alphas: list[float] = field(default_factory=list)
    betas: list[float] = field(default_factory=list)
    eigenvalues: list[float] = field(default_factory=list)
    matvec_time: float = 0.0
    solver_time: float = 0.0
