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

**Cost set by the forget set.** The retain term is evaluated on a fixed-size sample of the retain rows,
drawn once per run (``retain_sample``, :mod:`dist_unlearn.curvature.sample`), so a request costs the same
whatever the size of the training set; the forget set is read whole. With a forgetting objective the Lanczos
basis of one point is kept for the following steps' solves (``reuse_curvature``,
:mod:`dist_unlearn.methods.kept_curvature`): a later step costs a gradient and a trial loss, not a Krylov
solve. ``stats`` report ``hvps_per_accepted_step`` and ``curvature_bases``.

**Stochastic variant** (``cure_newton_stochastic``): the oracle draws a fresh gradient mini-batch and HVP
mini-batch every outer step (``oracle.resample(seed + k)``; batch sizes ``grad_batch_size`` /
``hvp_batch_size``, the paper's 128 / 64), and the subproblem is solved by Lanczos (``cubic_solver="krylov"``)
or by gradient descent on the cubic model (``cubic_solver="gd"``, Carmon-Duchi). ARC, when used, compares
losses on the step's gradient mini-batch.
"""

from __future__ import annotations

import math
from typing import Any

from dist_unlearn.curvature.oracle import CurvatureOracle
from dist_unlearn.curvature.sample import RetainSample, draw_retain_sample
from dist_unlearn.linalg import Vector
from dist_unlearn.methods.base import OuterLoopState, StepCallback
from dist_unlearn.methods.budget import PassBudget, max_iter_within, solve_stop, step_reserve
from dist_unlearn.methods.kept_curvature import KeptCurvatureSolver, reuse_possible
from dist_unlearn.methods.outer_loop import run_outer_loop
from dist_unlearn.methods.proposal import Proposal, Resolve, Solve
from dist_unlearn.methods.registry import register_method
from dist_unlearn.options import UnlearnOptions
from dist_unlearn.solvers.ties import at_most

EIG_TOL = 1e-2
"""Relative Ritz residual at which the |lambda|_max estimate stops (only its order of magnitude matters)."""


def estimate_initial_M(oracle: CurvatureOracle, g: Vector, gnorm: float, options: UnlearnOptions) -> float:
    """M_0 = 2 rho^2 / |g|, rho = max |eigenvalue| of H from at most ``eig_iterations`` Lanczos steps on g.

    Falls back to M_0 = 1 when the estimate is zero or non-finite. Under ``max_example_passes`` the
    estimate stops early so that the first solve (one HVP) and the step's reserve still fit.
    """
    from dist_unlearn.solvers import extreme_eigenvalues

    stop = None
    if options.max_example_passes is not None:
        budget = PassBudget(options.max_example_passes, oracle)
        reserve = step_reserve(options, OuterLoopState(), adaptive=True)
        stop = budget.stop_rule(1, **{**reserve, "hvp": 1.0})
    lam_min, lam_max = extreme_eigenvalues(
        oracle.hvp, g, options.eig_iterations, space=oracle.space, tol=EIG_TOL, stop=stop
    )
    rho = max(abs(float(lam_min)), abs(float(lam_max)))
    if not (math.isfinite(rho) and rho > 0 and gnorm > 0):
        return 1.0
    return 2.0 * rho * rho / gnorm


KRYLOV_FORCING = 0.1
"""Default forcing factor (``krylov_forcing`` None and no ``krylov_tol`` given)."""


def forcing_tol(options: UnlearnOptions, gnorm: float, g0norm: float) -> float:
    """Krylov tolerance of a step: max(krylov_tol, krylov_forcing * min(1, sqrt(|g_k| / |g_0|))).

    Inexact Newton (Eisenstat and Walker's sqrt rule): a loose solve while the gradient is far from small
    (the step will be corrected by the next outer step anyway), tightening as |g_k| falls; the floor
    ``krylov_tol`` applies near convergence.
    """
    forcing = options.krylov_forcing
    if forcing is None:
        forcing = 0.0 if "krylov_tol" in options.model_fields_set else KRYLOV_FORCING
    if not forcing or not g0norm > 0:
        return options.krylov_tol
    return max(options.krylov_tol, forcing * min(1.0, math.sqrt(gnorm / g0norm)))


def _proposal(res: Any) -> Proposal:
    return Proposal(
        step=res.step,
        step_norm=float(res.step_norm),
        model_value=float(res.model_value),
        iterations=int(res.iterations),
        hard_case=bool(res.hard_case),
        converged=bool(res.converged),
        message=str(getattr(res, "message", "")),
        krylov=getattr(res, "krylov", None),
    )


def krylov_solver(options: UnlearnOptions, state: OuterLoopState | None = None) -> tuple[Solve, Resolve]:
    """The Lanczos cubic solve (``solvers.cubic_subproblem``) with the forcing tolerance and HVP budget, and
    its re-solve on the kept Krylov space (``solvers.resolve_cubic``, no HVP).

    The forcing sequence's reference |g_0| is ``state.initial_grad_norm`` (kept in checkpoints, so a run
    restarted from one solves exactly as the undisturbed run), else the first |g| this solver sees.
    """
    from dist_unlearn.solvers import cubic_subproblem, resolve_cubic

    keep = bool(options.store_basis or options.reorthogonalize)
    first: list[float] = []  # |g_0| of this run (the forcing sequence's reference)
    tols: list[float] = [options.krylov_tol]

    def solve(oracle: CurvatureOracle, g: Vector, gnorm: float, M: float | None) -> Proposal:
        if not first:
            first.append(gnorm)
        g0 = state.initial_grad_norm if state is not None and state.initial_grad_norm else first[0]
        tols[0] = forcing_tol(options, gnorm, g0)
        res = cubic_subproblem(
            oracle.hvp,
            g,
            M,
            tol=tols[0],
            max_iter=options.krylov_max_iter or 30,
            space=oracle.space,
            reorthogonalize=options.reorthogonalize,
            store_basis=options.store_basis,
            keep_krylov=keep,
            stop=solve_stop(options, state, oracle),
        )
        return _proposal(res)

    def resolve(krylov: Any, M: float) -> Proposal:
        res = resolve_cubic(krylov, M)
        prop = _proposal(res)
        prop.converged = bool(res.converged or at_most(res.residual, tols[0]))
        prop.krylov = None
        return prop

    return solve, resolve


NORM_ITERS = 10
"""Lanczos steps of the GD solver's |H| estimate (its step size), when ``cubic_lr`` is not given."""


def gd_solver(options: UnlearnOptions) -> Solve:
    """Gradient descent on the cubic model (``solvers.cubic_gradient_descent``, Carmon-Duchi).

    Under ``max_example_passes`` its iterations are cut so that the solver's fixed HVPs (the |H| estimate
    without ``cubic_lr``, the H g of the Cauchy start and the final H d) fit too."""
    from dist_unlearn.solvers import cubic_gradient_descent

    overhead = 2 + (NORM_ITERS if options.cubic_lr is None else 0)
    adaptive = options.M is None

    def solve(oracle: CurvatureOracle, g: Vector, gnorm: float, M: float | None) -> Proposal:
        res = cubic_gradient_descent(
            oracle.hvp,
            g,
            M,
            lr=options.cubic_lr,
            max_iter=max(
                1,
                max_iter_within(options, oracle, overhead + (options.krylov_max_iter or 30), trial=adaptive)
                - overhead,
            ),
            norm_iters=NORM_ITERS,
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


CURE_DEFAULTS = {"krylov_max_iter": 30}
"""cure_newton's defaults: 30 HVPs per solve (or per kept basis, ``reuse_curvature``); ``max_steps``: see
:data:`MAX_STEPS`."""

MAX_STEPS = {"fresh": 10, "reuse": 40, "sampled_retain": 3}
"""cure_newton's default ``max_steps`` (accepted steps), measured as described below (benchmarks/RESULTS.md,
"How close does CureNewton get to the retrained model where Newton unlearning applies?"):

- ``fresh``: 10 with a fresh solve at each step (the loop usually stops earlier, "stalled" or "converged" by
  the relative rules);
- ``reuse``: 40 on a kept basis, whose steps cost a gradient and a trial loss instead of a Krylov solve (a
  forgetting run on the demo takes ~25, ended by the forgetting stop rule);
- ``sampled_retain``: 3 for the retain objective on a sample smaller than the retain set. Its minimiser is
  the sample's, not the retain set's (the sample's Hessian inverse is off in low-curvature directions), so
  after the first steps, which carry the exact first-order signal of the forget set (the influence
  anchor), more steps walk away from the retrained model: L2 MLPs at 15,000 rows, 2048-row sample, ToW
  0.963 / 0.978 / 0.991 after 3 steps, 0.865 / 0.907 / 0.909 after 10."""


def use_retain_samples(oracle: CurvatureOracle, options: UnlearnOptions) -> RetainSample | None:
    """Fix the oracle's retain samples for the run (:mod:`dist_unlearn.curvature.sample`): the gradient /
    loss rows and the HVP rows, drawn from ``options.seed``. None for an oracle without row samples."""
    use_rows = getattr(oracle, "use_rows", None)
    n = getattr(oracle, "num_examples", None)
    if not callable(use_rows) or not isinstance(n, int):
        return None
    sample = draw_retain_sample(options.retain_sample, options.hvp_sample, n, options.seed, options.objective)
    use_rows(sample.grad_rows, sample.hvp_rows)
    return sample


def run_cubic(
    oracle: CurvatureOracle,
    options: UnlearnOptions,
    state: OuterLoopState,
    on_step: StepCallback | None,
    *,
    method: str,
    stochastic: bool = False,
    sampled_retain: bool = False,
) -> None:
    """The outer loop of a cubic method with Krylov solves: fresh at each step, or on a kept basis.
    ``sampled_retain``: the retain objective on a strict sample of the retain set (sets the step default)."""
    if not stochastic and options.max_steps is None:
        key = "reuse" if reuse_possible(options) else "sampled_retain" if sampled_retain else "fresh"
        options = options.with_defaults({"max_steps": MAX_STEPS[key]})
    if reuse_possible(options, stochastic):
        kept = KeptCurvatureSolver(options, state, krylov_solver(options, state)[0])
        try:
            run_outer_loop(
                oracle, options, state, on_step, kept.solve, method=method, cubic=True,
                stochastic=stochastic, initial_M=kept.initial_M, resolve=kept.resolve,
            )  # fmt: skip
        finally:
            kept.release()
        return
    solve, resolve = krylov_solver(options, state)
    run_outer_loop(
        oracle, options, state, on_step, solve, method=method, cubic=True, stochastic=stochastic,
        initial_M=_initial_M(options), resolve=resolve,
    )  # fmt: skip


@register_method("cure_newton", curvature=True, defaults=CURE_DEFAULTS)
def cure_newton(
    oracle: CurvatureOracle, options: UnlearnOptions, state: OuterLoopState, on_step: StepCallback | None
) -> None:
    """Cubic-regularised Newton on the retain objective over fixed-size retain samples, Krylov (Lanczos)
    subproblem solves on a basis kept across steps."""
    sample = use_retain_samples(oracle, options)
    sampled = sample is not None and sample.grad_rows is not None and options.objective == "retain"
    run_cubic(oracle, options, state, on_step, method="cure_newton", sampled_retain=sampled)


@register_method(
    "cure_newton_stochastic",
    curvature=True,
    defaults={"max_steps": 20, "grad_batch_size": 128, "hvp_batch_size": 64, "krylov_max_iter": 30},
)
def cure_newton_stochastic(
    oracle: CurvatureOracle, options: UnlearnOptions, state: OuterLoopState, on_step: StepCallback | None
) -> None:
    """Cubic-regularised Newton with fresh gradient / HVP mini-batches each step (Krylov or GD solves)."""
    if options.cubic_solver != "gd":
        run_cubic(oracle, options, state, on_step, method="cure_newton_stochastic", stochastic=True)
        return
    run_outer_loop(
        oracle, options, state, on_step, gd_solver(options), method="cure_newton_stochastic", cubic=True,
        stochastic=True, initial_M=_initial_M(options), resolve=None,
    )  # fmt: skip
