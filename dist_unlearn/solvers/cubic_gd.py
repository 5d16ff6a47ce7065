"""Gradient descent on the cubic model (Carmon and Duchi, 2019), the stochastic variant's baseline solver.

For m(d) = g.d + 1/2 d.H d + (rho/3)|d|^3 with rho = M/2, the gradient is  grad m(d) = g + H d + rho |d| d.
Carmon-Duchi start at the Cauchy point d_0 = -R_c g/|g| (the minimiser of m along -g,
R_c = (-kappa + sqrt(kappa^2 + 4 rho |g|)) / (2 rho), kappa = g.H g/|g|^2) and iterate d <- d - eta grad m(d)
with eta = 1 / (4 (beta + rho R)), beta >= ||H||, R = beta/(2 rho) + sqrt((beta/(2 rho))^2 + |g|/rho) >= |d*|.
One matvec per iteration; the stopping rule |grad m(d)| <= tol |g| matches the Krylov solver's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from dist_unlearn.errors import ConfigError
from dist_unlearn.linalg import Vector, VectorSpace
from dist_unlearn.solvers._vectors import (
    Matvec,
    TimedMatvec,
    check_positive,
    checked_dot,
    combine,
    resolve_space,
    vector_norm,
)
from dist_unlearn.solvers.results import CubicResult
from dist_unlearn.solvers.spectrum import extreme_eigenvalues


def cubic_gradient_descent(
    matvec: Matvec,
    g: Vector,
    M: float,
    *,
    lr: float | None = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
    space: VectorSpace | None = None,
    hessian_norm: float | None = None,
    norm_iters: int = 10,
    callback: Callable[[int, float], None] | None = None,
) -> CubicResult:
    """Minimise the cubic model by gradient descent from the Cauchy point.

    Args:
        matvec: v -> H v.
        g: gradient (not modified).
        M: cubic weight (> 0); rho = M/2.
        lr: step size; None uses Carmon-Duchi's eta = 1/(4(beta + rho R)).
        max_iter: maximum gradient steps.
        tol: stop when |grad m(d)| <= tol |g|.
        space: vector space; None means TensorSpace.
        hessian_norm: beta >= ||H|| for the default lr; None estimates it with ``norm_iters`` Lanczos steps
            from g (those matvecs are counted in ``hvps``; the estimate is inflated by 10%).
        norm_iters: Lanczos steps for that estimate.
        callback: called as callback(hvps_so_far, model_value) after every iteration (costs 2 dots each).

    Returns:
        CubicResult (``hard_case`` is always False; coefficients/alphas/betas are empty).
    """
    start = time.perf_counter()
    space = resolve_space(space)
    M = check_positive("M", M)
    tol = check_positive("tol", tol)
    max_iter = check_positive("max_iter", max_iter, integer=True)
    if lr is not None:
        lr = check_positive("lr", lr)
    rho = 0.5 * M
    mv = TimedMatvec(matvec)
    gnorm = vector_norm(space, g, "g")
    if gnorm == 0.0:
        return CubicResult(
            step=space.zeros_like(g),
            multiplier=0.0,
            step_norm=0.0,
            model_value=0.0,
            iterations=0,
            hard_case=False,
            converged=True,
            message="g = 0: d = 0 is a stationary point",
        )
    if lr is None:
        if hessian_norm is None:
            lo, hi = extreme_eigenvalues(mv, g, norm_iters, space=space)
            hessian_norm = 1.1 * max(abs(lo), abs(hi))
        beta = check_positive("hessian_norm", hessian_norm) if hessian_norm != 0 else 1e-12
        radius = beta / (2 * rho) + math.sqrt((beta / (2 * rho)) ** 2 + gnorm / rho)
        lr = 1.0 / (4.0 * (beta + rho * radius))
    hg = mv(g)
    kappa = checked_dot(space, g, hg, "matvec output for g") / gnorm**2
    space.release(hg)
    r_c = (-kappa + math.sqrt(kappa * kappa + 4 * rho * gnorm)) / (2 * rho)
    d = combine(space, [-r_c / gnorm], [g])
    history: list[tuple[int, float]] = []
    residual, it, model = math.inf, 0, math.nan
    for it in range(1, max_iter + 1):  # noqa: B007
        hd = mv(d)
        dnorm = space.norm(d)
        grad = combine(space, [1.0, 1.0, rho * dnorm], [g, hd, d])
        gn = vector_norm(space, grad, f"cubic model gradient at iteration {it} (matvec output)")
        if callback is not None:
            model = space.dot(g, d) + 0.5 * space.dot(d, hd) + rho / 3 * dnorm**3
            history.append((mv.calls, model))
            callback(mv.calls, model)
        space.release(hd)
        residual = gn / gnorm
        if residual <= tol:
            space.release(grad)
            break
        space.axpy(-lr, grad, d)
        space.release(grad)
    hd = mv(d)
    dnorm = space.norm(d)
    model = space.dot(g, d) + 0.5 * checked_dot(space, d, hd, "final matvec output") + rho / 3 * dnorm**3
    space.release(hd)
    converged = residual <= tol
    if not math.isfinite(model):
        raise ConfigError(f"cubic gradient descent diverged (lr={lr:g} too large for this H).")
    return CubicResult(
        step=d,
        multiplier=rho * dnorm,
        step_norm=dnorm,
        model_value=model,
        iterations=it,
        hard_case=False,
        converged=converged,
        hvps=mv.calls,
        residual=residual,
        message="converged: |grad m| <= tol |g|" if converged else f"max_iter={max_iter} reached",
        matvec_time=mv.time,
        solver_time=time.perf_counter() - start,
        history=history,
    )
