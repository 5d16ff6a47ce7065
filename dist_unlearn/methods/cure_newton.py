r"""CureNewton: cubic-regularised Newton steps on the retain loss (arXiv:2406.14507).

Starting from the trained weights w_0, each outer step k minimises the cubic model of the retain loss L_r

    m_k(d) = g_k.d + 1/2 d.H_k d + (M/6)|d|^3,      g_k = grad L_r(w_k),  H_k = grad^2 L_r(w_k)

(or a Gauss-Newton H, option ``hvp="ggn"``) in the Krylov space K(H_k, g_k) (``solvers.cubic_subproblem``:
Lanczos + Newton on the secular equation in float64), and sets w_{k+1} = w_k + d_k. The global minimiser
satisfies (H_k + lambda I) d_k = -g_k with lambda = (M/2)|d_k| and H_k + lambda I positive semi-definite, so
the step stays finite on indefinite or singular Hessians, where plain Newton steps explode. Stop when
|g_k| <= ``tol`` or after ``max_steps`` accepted steps.

**Choice of M.** M bounds the Lipschitz constant of the Hessian. A user value (``M=...``) is used as is and
every step is accepted, as in the paper. With ``M=None`` it is adapted as in the ARC method of Cartis, Gould
and Toint (Math. Program. 127, 2011): after a trial step

    rho_k = (L_r(w_k) - L_r(w_k + d_k)) / (-m_k(d_k))          (actual / predicted decrease; m_k(0) = 0)

- rho_k <  eta1 (``arc_eta1``, 0.1): unsuccessful; the weights are restored (``oracle.snapshot/restore``)
  and M <- ``arc_grow`` * M (4). A non-finite trial loss counts as unsuccessful. The Krylov space is the
  same at the restored point (same w, same sample), so only the solve is repeated, not the gradient.
- eta1 <= rho_k < eta2 (``arc_eta2``, 0.9): successful; accept, keep M.
- rho_k >= eta2: very successful; accept, M <- max(``M_min``, ``arc_shrink`` * M) (0.1).

The standard ARC theory gives the same worst-case rates as a known M (|g| <= eps within O(eps^-3/2) steps)
while M never has to be guessed: if it is too small the step is rejected and M grows geometrically; if it
is too large, successful steps shrink it.

**Initial M** (when neither ``M`` nor ``M_init`` is given). For lambda much larger than the curvature, the
cubic step is d ~ -g/lambda with lambda = (M/2)|d|, hence lambda^2 ~ M|g|/2. Asking the first regularisation
lambda to equal rho = max |eigenvalue of H_0| (a Lanczos estimate, ``eig_iterations`` HVPs, via
``solvers.extreme_eigenvalues``) gives

    M_0 = 2 rho^2 / |g_0|,

a conservative first step (H_0 + lambda I has condition number <= 2: a gradient step of length ~|g|/(2 rho),
safe for an L-smooth loss with L = rho); ARC then shrinks M towards Newton steps as long as the model
predicts the loss well.

**Stochastic variant** (``cure_newton_stochastic``): the oracle draws a fresh gradient mini-batch and HVP
mini-batch every outer step (``oracle.resample(seed + k)``; batch sizes ``grad_batch_size`` /
``hvp_batch_size``, the paper's 128 / 64), and the subproblem is solved by Lanczos (``cubic_solver="krylov"``)
or by gradient descent on the cubic model (``cubic_solver="gd"``, Carmon-Duchi). ARC, when used, compares
losses on the step's gradient mini-batch.
"""

from __future__ import annotations

import math

from dist_unlearn.curvature.oracle import CurvatureOracle
from dist_unlearn.linalg import Vector
from dist_unlearn.methods.base import OuterLoopState, StepCallback
from dist_unlearn.methods.outer_loop import Proposal, Solve, run_outer_loop
from dist_unlearn.methods.registry import register_method
from dist_unlearn.options import UnlearnOptions

EIG_TOL = 1e-2
"""Relative Ritz residual at which the |lambda|_max estimate stops (only its order of magnitude matters)."""


def estimate_initial_M(oracle: CurvatureOracle, g: Vector, gnorm: float, options: UnlearnOptions) -> float:
    """M_0 = 2 rho^2 / |g|, rho = max |eigenvalue| of H from at most ``eig_iterations`` Lanczos steps on g.

    Falls back to M_0 = 1 when the estimate is zero or non-finite.
    """
    from dist_unlearn.solvers import extreme_eigenvalues

    lam_min, lam_max = extreme_eigenvalues(
        oracle.hvp, g, options.eig_iterations, space=oracle.space, tol=EIG_TOL
    )
    rho = max(abs(float(lam_min)), abs(float(lam_max)))
    if not (math.isfinite(rho) and rho > 0 and gnorm > 0):
        return 1.0
    return 2.0 * rho * rho / gnorm


def krylov_solver(options: UnlearnOptions) -> Solve:
    """The Lanczos cubic solve (``solvers.cubic_subproblem``) with the options' Krylov settings."""
    from dist_unlearn.solvers import cubic_subproblem

    def solve(oracle: CurvatureOracle, g: Vector, gnorm: float, M: float | None) -> Proposal:
        res = cubic_subproblem(
            oracle.hvp,
            g,
            M,
            tol=options.krylov_tol,
            max_iter=options.krylov_max_iter,
            space=oracle.space,
            reorthogonalize=options.reorthogonalize,
            store_basis=options.store_basis,
        )
        return Proposal(
            step=res.step,
            step_norm=float(res.step_norm),
            model_value=float(res.model_value),
            iterations=int(res.iterations),
            hard_case=bool(res.hard_case),
            converged=bool(res.converged),
            message=str(getattr(res, "message", "")),
        )

    return solve


def gd_solver(options: UnlearnOptions) -> Solve:
    """Gradient descent on the cubic model (``solvers.cubic_gradient_descent``, Carmon-Duchi)."""
    from dist_unlearn.solvers import cubic_gradient_descent

    def solve(oracle: CurvatureOracle, g: Vector, gnorm: float, M: float | None) -> Proposal:
        res = cubic_gradient_descent(
            oracle.hvp,
            g,
            M,
            lr=options.cubic_lr,
            max_iter=options.krylov_max_iter,
            tol=options.krylov_tol,
            space=oracle.space,
        )
        return Proposal(
            step=res.step,
            step_norm=float(res.step_norm),
            model_value=float(res.model_value),
            iterations=int(res.iterations),
            hard_case=bool(getattr(res, "hard_case", False)),
            converged=bool(res.converged),
            message=str(getattr(res, "message", "")),
        )

    return solve


def _initial_M(options: UnlearnOptions):
    return lambda oracle, g, gnorm: estimate_initial_M(oracle, g, gnorm, options)


@register_method("cure_newton", curvature=True, defaults={"max_steps": 20})
def cure_newton(
    oracle: CurvatureOracle, options: UnlearnOptions, state: OuterLoopState, on_step: StepCallback | None
) -> None:
    """Cubic-regularised Newton on the full retain loss, Krylov (Lanczos) subproblem solves."""
    run_outer_loop(
        oracle,
        options,
        state,
        on_step,
        krylov_solver(options),
        method="cure_newton",
        cubic=True,
        initial_M=_initial_M(options),
    )


@register_method(
    "cure_newton_stochastic",
    curvature=True,
    defaults={"max_steps": 20, "grad_batch_size": 128, "hvp_batch_size": 64},
)
def cure_newton_stochastic(
    oracle: CurvatureOracle, options: UnlearnOptions, state: OuterLoopState, on_step: StepCallback | None
) -> None:
    """Cubic-regularised Newton with fresh gradient / HVP mini-batches each step (Krylov or GD solves)."""
    solve = gd_solver(options) if options.cubic_solver == "gd" else krylov_solver(options)
    run_outer_loop(
        oracle,
        options,
        state,
        on_step,
        solve,
        method="cure_newton_stochastic",
        cubic=True,
        stochastic=True,
        initial_M=_initial_M(options),
    )
