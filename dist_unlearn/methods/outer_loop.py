"""The outer loop shared by the curvature methods: w <- w + d(w) with ARC acceptance and NaN recovery.

Each outer iteration k at weights w_k:

1. (stochastic variant) ``oracle.resample(seed + k)`` fixes the gradient / HVP mini-batches;
2. (L_k, g_k) = (L_r(w_k), grad L_r(w_k)); a NaN/inf value restores the weights before the last update and
   raises :class:`~dist_unlearn.errors.NumericalError`; stop when |g_k| <= tol or after ``max_steps``
   accepted updates;
3. a method-specific ``solve`` proposes d_k and the value m_k(d_k) of its local model (m_k(0) = 0);
4. w <- w_k + d_k. With adaptive M (ARC), the step is judged by rho_k = (L_k - L_r(w_k + d_k)) / (-m_k(d_k)):
   rejected when rho_k < eta1 (weights restored from ``oracle.snapshot()``, M grown), M shrunk when
   rho_k >= eta2 (see :mod:`dist_unlearn.methods.cure_newton` for the maths).

Cheap solves: after a rejection the point, the sample and hence the Krylov space are unchanged, so
the new M is solved on the stored tridiagonal T and basis (``resolve``, no HVP). The first adaptive step
tries a geometric range of M on its Krylov space (``first_M_tries``; one loss evaluation each, no HVP) and
keeps the one with the largest actual decrease among those with rho >= eta1. The loop also stops when
|g_k| <= ``grad_rtol`` |g_0| ("converged") or when an accepted step is shorter than ``step_rtol`` times the
longest accepted one ("stalled": the model stopped changing).

Forgetting stop rule: when the oracle carries a ``stop_rule``
(:class:`dist_unlearn.stopping.ForgetStopRule`), it judges the weights as given and each step ARC accepted
by the forget-vs-calibration loss AUC: indistinguishable stops the run ("forgotten"); an overshoot (forget
rows now fitted worse than unseen data) is rejected like an ARC rejection, with M grown from the step's M
and the subproblem re-solved on the stored Krylov space (no new HVP), so the step shortens.
"""

from __future__ import annotations

import math
import time
from typing import Any

from dist_unlearn.curvature.oracle import CurvatureOracle
from dist_unlearn.errors import NumericalError
from dist_unlearn.linalg import Vector
from dist_unlearn.methods.base import OuterLoopState, StepCallback
from dist_unlearn.methods.budget import PassBudget, budget_stop
from dist_unlearn.methods.first_m import search_first_M, try_step
from dist_unlearn.methods.proposal import InitialM, Resolve, Solve
from dist_unlearn.methods.step_log import count, progress_bar, record_step, watch_hvps
from dist_unlearn.options import UnlearnOptions
from dist_unlearn.solvers.ties import at_most, rho_at_least


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _evaluate(oracle: CurvatureOracle, good: Any, k: int, ready: Any = None) -> tuple[float, Vector]:
    """(L, g) at the current weights (``ready``: already evaluated there by the trial call); on NaN/inf
    restore ``good`` (if any) and raise NumericalError."""
    err: Exception | None = None
    try:
        loss, g = ready if ready is not None else oracle.loss_and_gradient()
    except NumericalError as e:
        err = e
    else:
        if not _finite(loss):
            err = NumericalError(f"the retain loss is {loss}")
        elif not oracle.space.is_finite(g):
            err = NumericalError("the retain gradient has non-finite entries (NaN or inf)")
    if err is None:
        return loss, g
    if good is not None:
        oracle.restore(good)
        where = f"the weights were restored to the last good point (before the update of outer step {k - 1})"
    else:
        where = "no update of this run had been applied, the weights are those given"
    raise NumericalError(f"non-finite value at outer step {k}: {err}; {where}.") from err


def run_outer_loop(
    oracle: CurvatureOracle,
    options: UnlearnOptions,
    state: OuterLoopState,
    on_step: StepCallback | None,
    solve: Solve,
    *,
    method: str,
    cubic: bool,
    stochastic: bool = False,
    initial_M: InitialM | None = None,
    resolve: Resolve | None = None,
) -> OuterLoopState:
    """Run outer steps until |g| <= tol, ``max_steps`` accepted updates, too many rejections, or the
    ``max_example_passes`` cap (stop_reason "budget", see :mod:`dist_unlearn.methods.budget`).

    Args:
        oracle: curvature oracle (its weights are updated in place).
        options: options with the method defaults filled in (``max_steps`` set).
        state: advanced in place (continue from a checkpoint by passing the saved one).
        on_step: callback after each step, see :func:`dist_unlearn.methods.base.run_curvature_method`.
        solve: the method's subproblem solver.
        method: name shown in messages and progress bars.
        cubic: True for cubic models (M used; ARC when ``options.M`` is None).
        stochastic: resample the oracle's mini-batches every step.
        initial_M: first M when ARC starts without ``options.M_init``.
        resolve: re-solve on a stored Krylov space (rejections and the first-M search cost no HVP).
    """
    space = oracle.space
    adaptive = cubic and options.M is None
    max_steps = options.max_steps if options.max_steps is not None else 20
    if cubic and not adaptive:
        state.M = options.M
    elif adaptive and state.M is None and options.M_init is not None:
        state.M = options.M_init
    budget = PassBudget(options.max_example_passes, oracle)
    rule = getattr(oracle, "stop_rule", None)
    bar = progress_bar(options, method, max_steps, state.accepted)
    unwatch = watch_hvps(oracle, bar)
    good: Any = None  # snapshot of the weights before the last applied update (the last good point)
    cached: tuple[float, Vector] | None = None  # (L, g) kept across a rejection (same weights and sample)
    krylov: Any = None  # the Krylov space of the current point, kept across a rejection
    ready: tuple[float, Vector] | None = None  # (L, g) the trial call already evaluated at the new point
    state.finished = False
    try:
        while True:
            t0 = time.perf_counter()
            h0, g0 = count(oracle, "hvps"), count(oracle, "gradients")
            k = state.step
            first = None
            if rule is not None and not state.stop_checks:  # the weights as given: anything to forget?
                first = rule.check(-1)  # before the first gradient: it sets an objective's bins
                state.stop_checks.append(first.to_dict())
            if cached is not None:
                loss, g = cached
                cached = None
            else:
                if stochastic:
                    oracle.resample(state.seed + k)
                loss, g = _evaluate(oracle, good, k, ready)
                ready = None
            good = None
            gnorm = space.norm(g)
            state.final_loss, state.final_grad_norm = loss, gnorm
            if state.initial_grad_norm is None:
                state.initial_grad_norm = gnorm
            if first is not None and first.decision != "continue":
                worse = "forget_worse_than_unseen"
                state.stop_reason = "forgotten" if first.decision == "stop" else worse
                break
            stop = _stop_reason(options, state, gnorm, max_steps) or budget_stop(
                budget, options, state, adaptive, resolving=krylov is not None and resolve is not None
            )
            if stop:
                state.stop_reason = stop
                break
            M = state.M if cubic else None
            trial = None
            try:
                if krylov is not None and resolve is not None:
                    prop = resolve(krylov, M)  # same point, same sample: same Krylov space, no HVP
                elif adaptive and state.M is None:
                    assert initial_M is not None, "adaptive M needs an initial_M estimate"
                    M0 = max(float(initial_M(oracle, g, gnorm)), options.M_min)
                    if resolve is not None and options.first_M_tries > 1:
                        prop, M, trial = search_first_M(oracle, solve, resolve, g, gnorm, loss, M0, options)
                    else:
                        M = M0
                        prop = solve(oracle, g, gnorm, M)
                    state.M = M
                else:
                    prop = solve(oracle, g, gnorm, M)
            except NumericalError as e:
                raise NumericalError(
                    f"{method}: the subproblem solve at outer step {k} failed ({e}); the weights are those "
                    "of the last good point (where loss and gradient were finite)."
                ) from e
            if prop.krylov is not None:
                krylov = prop.krylov
            finite, prepared = math.isfinite(prop.step_norm), None
            if finite:  # snapshot, apply and (ARC) the trial loss: one round trip on the engine
                # the engine also evaluates the next gradient where ARC accepts (no stop rule, no new sample)
                arc = None
                if adaptive and rule is None and not stochastic:
                    arc = (loss, -prop.model_value, options.arc_eta1, trial)
                good, value, finite, prepared = try_step(
                    oracle, prop.step, with_loss=adaptive and trial is None, arc=arc
                )
            if not finite:
                _release_krylov(krylov)
                raise NumericalError(
                    f"{method}: the proposed step at outer step {k} has non-finite entries; the weights are "
                    "those of the last good point."
                )
            accepted, rho = True, None
            if adaptive:
                if trial is None:
                    trial = value
                predicted = -prop.model_value
                if not predicted > 0:
                    oracle.restore(good)
                    good = None
                    space.release(prop.step)
                    space.release(g)
                    krylov = _release_krylov(krylov)
                    state.stop_reason = "no_model_decrease"
                    record_step(
                        state, on_step, k, loss, gnorm, prop, M, oracle, h0, g0, t0, False, trial, None
                    )
                    break
                rho = (loss - trial) / predicted if _finite(trial) else -math.inf
                if rho_at_least(loss, trial, predicted, options.arc_eta1):
                    if rho_at_least(loss, trial, predicted, options.arc_eta2):
                        state.M = max(options.M_min, options.arc_shrink * state.M)
                else:
                    accepted = False
                    oracle.restore(good)
                    good = None
                    state.M = state.M * options.arc_grow
                    if not stochastic:
                        cached = (loss, g)
            check = None
            if accepted and rule is not None:
                check = rule.check(k)
                state.stop_checks.append(check.to_dict())
                if check.decision == "overshoot":  # refused like an ARC rejection: a larger M, a shorter step
                    accepted = False
                    oracle.restore(good)
                    good = None
                    if cubic:
                        state.M = M * options.arc_grow  # from the step's M (ARC may have shrunk state.M)
                        if not stochastic:
                            cached = (loss, g)
                    else:  # a Newton baseline's step has no M to grow: stop at the last good point
                        state.stop_reason = "overshoot"
                elif check.decision == "stop":
                    state.forgotten = True
            space.release(prop.step)
            if cached is None:
                space.release(g)
                krylov = _release_krylov(krylov)
            if prepared is not None:  # (L, g) at the accepted point, for the next outer step
                if accepted and cached is None:
                    ready = prepared
                else:
                    space.release(prepared[1])
            if accepted:
                state.max_step_norm = max(state.max_step_norm, float(prop.step_norm))
            record_step(
                state, on_step, k, loss, gnorm, prop, M, oracle, h0, g0, t0, accepted, trial, rho, check
            )
            if state.stop_reason == "overshoot":
                break
            if bar is not None:
                bar.update(1 if accepted else 0)
                bar.set_postfix(loss=f"{loss:.4g}", g=f"{gnorm:.2e}", M=f"{M:.2e}" if M else "-")
            if accepted:
                small = relative_rules(options)[1] * state.max_step_norm
                state.last_step_small = at_most(prop.step_norm, small)
            if state.consecutive_rejections >= options.max_rejections:
                recent = state.history[-state.consecutive_rejections :]
                if all(not _finite(r.trial_loss) for r in recent):
                    raise NumericalError(
                        f"{method}: the loss was non-finite at each of the last {len(recent)} trial points "
                        f"(M grown to {state.M:.3g}); the weights are those of the last good point."
                    )
                state.stop_reason = "max_rejections"
                break
    finally:
        _release_krylov(krylov)
        unwatch()
        if bar is not None:
            bar.close()
    state.finished = True
    return state


GRAD_RTOL = 1e-3
"""Default of ``grad_rtol`` when ``tol`` is None: |g| reduced 1000x counts as converged."""
STEP_RTOL = 1e-2
"""Default of ``step_rtol`` when ``tol`` is None: a step 100x shorter than the longest means stalled."""


def relative_rules(options: UnlearnOptions) -> tuple[float, float]:
    """(grad_rtol, step_rtol) in force: the given ones, else the defaults when ``tol`` is None, else 0."""
    auto = options.tol is None
    grad = options.grad_rtol if options.grad_rtol is not None else (GRAD_RTOL if auto else 0.0)
    step = options.step_rtol if options.step_rtol is not None else (STEP_RTOL if auto else 0.0)
    return grad, step


def _stop_reason(options: UnlearnOptions, state: OuterLoopState, gnorm: float, max_steps: int) -> str:
    """Why to stop at this point ("" = go on): forgotten (the stop rule), |g| small (absolute or relative),
    stalled, or max_steps."""
    if state.forgotten:
        return "forgotten"
    if at_most(gnorm, options.tol or 0.0):
        return "converged"
    grad_rtol, _ = relative_rules(options)
    g0 = state.initial_grad_norm
    if state.accepted and g0 and at_most(gnorm, grad_rtol * g0):
        return "converged"
    if state.last_step_small:
        return "stalled"
    if state.accepted >= max_steps:
        return "max_steps"
    return ""


def _release_krylov(krylov: Any) -> None:
    if krylov is not None:
        krylov.release()
    return None
