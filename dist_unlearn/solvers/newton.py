"""Newton baselines on the same Lanczos machinery: damped Newton and pseudo-inverse Newton.

These are the paper's failing baselines, implemented faithfully (no safeguards that would fix them):

* damped Newton:  d = -(H + delta I)^{-1} g  for a fixed damping delta; when H + delta I is indefinite or
  nearly singular the step can be huge (that is the point of the baseline).
* pseudo-inverse Newton:  d = -sum_{i kept} (u_i.g / theta_i) u_i  over eigenpairs (theta_i, u_i) of H with
  |theta_i| > threshold (or the ``rank`` largest |theta_i|); tiny kept eigenvalues give large updates.

Both work in K_k(H, g): with T_k = U diag(theta) U^T and c = |g| U^T e_1, the small solution is
y = U z with z_i = -c_i / (theta_i + delta) (damped) or -c_i / theta_i on the kept set (pinv), d = Q_k y.
The stopping rule is |beta_k y_k[-1]| <= tol |g|, the part of H d outside the Krylov space.
``model_value`` is the quadratic model g.d + 1/2 d.H d (no damping term).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from dist_unlearn.errors import ConfigError, NumericalError
from dist_unlearn.linalg import Vector, VectorSpace
from dist_unlearn.solvers._vectors import (
    Matvec,
    TimedMatvec,
    check_positive,
    combine,
    resolve_space,
    vector_norm,
)
from dist_unlearn.solvers.cubic import tridiagonal_eigh
from dist_unlearn.solvers.lanczos import DEFAULT_BREAKDOWN_TOL, LanczosProcess, lanczos_combine
from dist_unlearn.solvers.results import NewtonResult

SmallSolve = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _krylov_newton(
    matvec: Matvec,
    g: Vector,
    small: SmallSolve,
    *,
    tol: float,
    max_iter: int,
    space: VectorSpace | None,
    reorthogonalize: bool,
    store_basis: bool,
    damping: float,
    name: str,
) -> NewtonResult:
    start = time.perf_counter()
    space = resolve_space(space)
    tol = check_positive("tol", tol)
    max_iter = check_positive("max_iter", max_iter, integer=True)
    mv = TimedMatvec(matvec)
    gnorm = vector_norm(space, g, "g")
    if gnorm == 0.0:
        return NewtonResult(
            step=space.zeros_like(g),
            step_norm=0.0,
            model_value=0.0,
            iterations=0,
            hvps=0,
            converged=True,
            damping=damping,
            message="g = 0: d = 0",
            solver_time=time.perf_counter() - start,
        )
    proc = LanczosProcess(
        mv,
        g,
        space,
        reorthogonalize=reorthogonalize,
        keep_basis=store_basis or reorthogonalize,
        breakdown_tol=DEFAULT_BREAKDOWN_TOL,
        v0_norm=gnorm,
        what="g",
    )
    residual, y, kept = math.inf, np.zeros(1), np.zeros(0)
    while proc.iterations < max_iter:
        proc.step()
        theta, u = tridiagonal_eigh(proc.alphas, proc.betas[:-1])
        z, kept = small(theta, gnorm * u[0, :])
        y = u @ z
        residual = abs(proc.betas[-1] * y[-1]) / gnorm
        if residual <= tol or proc.breakdown:
            break
    t = np.diag(proc.alphas) + np.diag(proc.betas[:-1], 1) + np.diag(proc.betas[:-1], -1)
    model = float(gnorm * y[0] + 0.5 * y @ t @ y)
    converged = residual <= tol or proc.breakdown
    if proc.basis is not None:
        step = combine(space, y, proc.krylov_basis)
        proc.release()
    else:
        proc.release()
        step = lanczos_combine(mv, g, proc.alphas, proc.betas, y, space=space)
    message = (
        f"{name}: converged" if converged else f"{name}: max_iter={max_iter} reached, residual {residual:.3e}"
    )
    return NewtonResult(
        step=step,
        step_norm=float(np.linalg.norm(y)),
        model_value=model,
        iterations=proc.iterations,
        hvps=mv.calls,
        converged=bool(converged),
        residual=float(residual),
        damping=damping,
        message=message,
        coefficients=[float(v) for v in y],
        alphas=list(proc.alphas),
        betas=list(proc.betas),
        eigenvalues=[float(v) for v in kept],
        matvec_time=mv.time,
        solver_time=time.perf_counter() - start,
    )


def damped_newton(
    matvec: Matvec,
    g: Vector,
    damping: float,
    *,
    tol: float = 1e-6,
    max_iter: int = 100,
    space: VectorSpace | None = None,
    reorthogonalize: bool = True,
    store_basis: bool = True,
) -> NewtonResult:
    """Damped Newton step d = -(H + damping I)^{-1} g, solved in the Krylov space (Lanczos, like CG/SYMMLQ).

    Args:
        matvec: v -> H v.
        g: gradient.
        damping: delta >= 0 added to the diagonal (finite).
        tol, max_iter, space, reorthogonalize, store_basis: as in :func:`cubic_subproblem`.

    Returns:
        NewtonResult (``eigenvalues``: Ritz values of the final T).

    Raises:
        ConfigError: damping negative or non-finite.
        NumericalError: H + damping I singular in the Krylov space.
    """
    try:
        delta = float(damping)
    except (TypeError, ValueError):
        delta = math.nan
    if isinstance(damping, bool) or not math.isfinite(delta) or delta < 0:
        raise ConfigError(f"damping={damping!r} is not allowed; it must be a finite number >= 0.")

    def small(theta: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shifted = theta + delta
        if np.any(np.abs(shifted) <= 1e-14 * max(1.0, float(np.abs(theta).max()))):
            raise NumericalError(
                f"damped Newton: H + {delta:g} I is singular in the Krylov space (Ritz value "
                f"{float(theta[np.argmin(np.abs(shifted))]):.6g}); use a larger damping or cubic_subproblem."
            )
        return -c / shifted, theta

    return _krylov_newton(
        matvec,
        g,
        small,
        tol=tol,
        max_iter=max_iter,
        space=space,
        reorthogonalize=reorthogonalize,
        store_basis=store_basis,
        damping=delta,
        name="damped Newton",
    )


def pinv_newton(
    matvec: Matvec,
    g: Vector,
    *,
    rank: int | None = None,
    threshold: float | None = None,
    rcond: float = 1e-8,
    tol: float = 1e-6,
    max_iter: int = 100,
    space: VectorSpace | None = None,
    reorthogonalize: bool = True,
    store_basis: bool = True,
) -> NewtonResult:
    """Pseudo-inverse Newton step d = -H^+ g from Lanczos eigenpairs (Ritz pairs of K_k(H, g)).

    Args:
        matvec: v -> H v.
        g: gradient.
        rank: keep only the ``rank`` Ritz values of largest |theta|.
        threshold: keep only |theta| > threshold. With neither given, threshold = rcond * max|theta|.
        rcond: relative cut-off used when rank and threshold are both None.
        tol, max_iter, space, reorthogonalize, store_basis: as in :func:`cubic_subproblem`.

    Returns:
        NewtonResult (``eigenvalues``: the kept Ritz values).
    """
    if rank is not None:
        rank = check_positive("rank", rank, integer=True)
    if threshold is not None:
        try:
            thr = float(threshold)
        except (TypeError, ValueError):
            thr = math.nan
        if not math.isfinite(thr) or thr < 0:
            raise ConfigError(f"threshold={threshold!r} is not allowed; it must be a finite number >= 0.")
    rcond = check_positive("rcond", rcond)

    def small(theta: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mag = np.abs(theta)
        keep = np.ones(theta.shape, dtype=bool)
        if threshold is not None:
            keep &= mag > float(threshold)
        if rank is not None and rank < theta.size:
            keep &= mag >= np.sort(mag)[-rank]
        if threshold is None and rank is None:
            keep &= mag > rcond * float(mag.max())
        z = np.zeros_like(theta)
        z[keep] = -c[keep] / theta[keep]
        return z, theta[keep]

    return _krylov_newton(
        matvec,
        g,
        small,
        tol=tol,
        max_iter=max_iter,
        space=space,
        reorthogonalize=reorthogonalize,
        store_basis=store_basis,
        damping=0.0,
        name="pinv Newton",
    )
