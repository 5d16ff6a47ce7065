"""Re-solving the cubic subproblem on a Krylov space already built: a new M costs no matvec.

The Lanczos space K_k(H, g) does not depend on M: only where the solve stopped does. After an ARC rejection
(same weights, same sample, so the same H and g) or when several M are tried on the first step, the stored
tridiagonal T_k = Q_k^T H Q_k and the basis Q_k give the Krylov minimiser for any M:

    y(M) = argmin_y |g| y_1 + 1/2 y.T_k y + (M/6)|y|^3,      d(M) = Q_k y(M),

solved in float64 (:func:`~dist_unlearn.solvers.cubic.solve_tridiagonal_cubic`), with the residual estimate
|beta_k y_k(M)| / |g| telling how good the old space is for the new M (a larger M shrinks the step, which
converges in fewer Lanczos iterations, so the space built for the smaller M is good enough).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from dist_unlearn.errors import ConfigError
from dist_unlearn.linalg import Vector, VectorSpace
from dist_unlearn.solvers._vectors import check_positive, combine, release_all
from dist_unlearn.solvers.cubic import solve_tridiagonal_cubic
from dist_unlearn.solvers.results import CubicResult


@dataclass
class KrylovSpace:
    """A Lanczos space kept after a solve: T's scalars, the basis q_1..q_k and |g| (owns the basis).

    Attributes:
        alphas: diagonal of T_k (k values).
        betas: off-diagonals, k values: betas[:-1] inside T_k, betas[-1] = beta_k the residual coupling.
        basis: q_1..q_k (vectors of ``space``), released by :meth:`release`.
        gnorm: |g|.
        space: the vector space.
        breakdown: Lanczos found an invariant space (the Krylov minimiser is then exact for every M).
    """

    alphas: list[float]
    betas: list[float]
    basis: list[Vector]
    gnorm: float
    space: VectorSpace
    breakdown: bool = False
    released: bool = field(default=False, repr=False)

    @property
    def dimension(self) -> int:
        return len(self.alphas)

    def ritz_extremes(self) -> tuple[float, float]:
        """Smallest and largest eigenvalue of T_k (Lanczos estimates of H's extremes; no matvec)."""
        from dist_unlearn.solvers.cubic import tridiagonal_eigh

        theta, _ = tridiagonal_eigh(self.alphas, self.betas[:-1])
        return float(theta[0]), float(theta[-1])

    def release(self) -> None:
        """Free the basis vectors (the space cannot be re-solved afterwards)."""
        if not self.released:
            release_all(self.space, self.basis)
            self.basis = []
            self.released = True


def resolve_cubic(krylov: KrylovSpace, M: float) -> CubicResult:
    """The Krylov minimiser of g.d + 1/2 d.H d + (M/6)|d|^3 on a stored space, for a new M (no matvec).

    Args:
        krylov: the space from ``cubic_subproblem(..., keep_krylov=True).krylov``.
        M: the new cubic weight (> 0).

    Returns:
        CubicResult with ``hvps=0``; ``converged`` when the residual estimate |beta_k y_k| <= the one the
        space was built for is not known here, so it reports ``residual`` and sets converged for a breakdown
        space only (callers compare ``residual`` with their tolerance). ``step`` is a new vector.

    Raises:
        ConfigError: M not a finite positive number, or the space was released.
    """
    start = time.perf_counter()
    M = check_positive("M", M)
    if krylov.released or len(krylov.basis) < krylov.dimension:
        raise ConfigError("resolve_cubic: the Krylov space was released; keep it until the last re-solve.")
    sol = solve_tridiagonal_cubic([(krylov.alphas, krylov.betas[:-1])], krylov.gnorm, M)
    residual = 0.0 if krylov.breakdown else abs(krylov.betas[-1] * sol.y[-1]) / krylov.gnorm
    step = combine(krylov.space, sol.y, krylov.basis[: krylov.dimension])
    return CubicResult(
        step=step,
        multiplier=float(sol.multiplier),
        step_norm=float(np.linalg.norm(sol.y)),
        model_value=float(sol.model_value),
        iterations=0,
        hard_case=bool(sol.hard_case),
        converged=bool(krylov.breakdown),
        hvps=0,
        residual=float(residual),
        message=f"re-solved on the stored {krylov.dimension}-dimensional Krylov space (no matvec)",
        coefficients=[float(v) for v in sol.y],
        alphas=list(krylov.alphas),
        betas=list(krylov.betas),
        solver_time=time.perf_counter() - start,
    )
