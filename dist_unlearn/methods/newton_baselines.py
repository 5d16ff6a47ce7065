r"""Newton-step unlearning baselines, kept faithful so that they fail the way the paper reports.

Newton unlearning (influence-function style) moves the trained weights w by one Newton step on the retain
loss, w <- w - H^{-1} g. Trained networks have indefinite and nearly singular retain Hessians, so the raw step
is ill defined; the two usual fixes are

- ``damped_newton``: d = -(H + lambda I)^{-1} g with a fixed ``damping`` lambda >= 0
  (``solvers.damped_newton``);
- ``pinv_newton``:   d = -H^+ g, the pseudo-inverse over the Lanczos eigenpairs of H with |mu| > ``threshold``
  (at most ``rank`` of them; ``solvers.pinv_newton``).

Both divide by small (or negative) eigenvalues of H, which makes |d| orders of magnitude larger than a cubic
step: that is the failure CureNewton fixes, and what these baselines are here to show. There is no step
acceptance test or line search. ``max_steps`` defaults to 1 (the classic single-step update); more steps
iterate w <- w + d(w).
"""

from __future__ import annotations

from dist_unlearn.curvature.oracle import CurvatureOracle
from dist_unlearn.linalg import Vector
from dist_unlearn.methods.base import OuterLoopState, StepCallback
from dist_unlearn.methods.budget import max_iter_within
from dist_unlearn.methods.outer_loop import run_outer_loop
from dist_unlearn.methods.proposal import Proposal
from dist_unlearn.methods.registry import register_method
from dist_unlearn.options import UnlearnOptions


def _proposal(res) -> Proposal:
    return Proposal(
        step=res.step,
        step_norm=float(res.step_norm),
        model_value=float(res.model_value),
        iterations=int(getattr(res, "iterations", getattr(res, "hvps", 0))),
        hard_case=False,
        converged=bool(getattr(res, "converged", True)),
        message=str(getattr(res, "message", "")),
    )


@register_method("damped_newton", curvature=True, defaults={"max_steps": 1, "krylov_max_iter": 100})
def damped_newton(
    oracle: CurvatureOracle, options: UnlearnOptions, state: OuterLoopState, on_step: StepCallback | None
) -> None:
    """Damped Newton: d = -(H + damping I)^-1 g, no safeguard (baseline)."""
    from dist_unlearn.solvers import damped_newton as solve_damped

    def solve(oracle: CurvatureOracle, g: Vector, gnorm: float, M: float | None) -> Proposal:
        res = solve_damped(
            oracle.hvp,
            g,
            options.damping,
            tol=options.krylov_tol,
            max_iter=max_iter_within(options, oracle, options.krylov_max_iter),
            space=oracle.space,
            reorthogonalize=options.reorthogonalize,
            store_basis=options.store_basis,
        )
        return _proposal(res)

    run_outer_loop(oracle, options, state, on_step, solve, method="damped_newton", cubic=False)


@register_method("pinv_newton", curvature=True, defaults={"max_steps": 1, "krylov_max_iter": 100})
def pinv_newton(
    oracle: CurvatureOracle, options: UnlearnOptions, state: OuterLoopState, on_step: StepCallback | None
) -> None:
    """Pseudo-inverse Newton: d = -H^+ g over Lanczos eigenpairs, no safeguard (baseline)."""
    from dist_unlearn.solvers import pinv_newton as solve_pinv

    def solve(oracle: CurvatureOracle, g: Vector, gnorm: float, M: float | None) -> Proposal:
        res = solve_pinv(
            oracle.hvp,
            g,
            rank=options.rank,
            threshold=options.threshold,
            tol=options.krylov_tol,
            max_iter=max_iter_within(options, oracle, options.krylov_max_iter),
            space=oracle.space,
            reorthogonalize=options.reorthogonalize,
            store_basis=options.store_basis,
        )
        return _proposal(res)

    run_outer_loop(oracle, options, state, on_step, solve, method="pinv_newton", cubic=False)
