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
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dist_unlearn.curvature.oracle import CurvatureOracle
from dist_unlearn.errors import NumericalError
from dist_unlearn.linalg import Vector
from dist_unlearn.methods.base import OuterLoopState, StepCallback, StepRecord
from dist_unlearn.options import UnlearnOptions


@dataclass
class Proposal:
    """A proposed update d and what the solver says about it."""

    step: Vector
    step_norm: float
    model_value: float
    iterations: int
    hard_case: bool = False
    converged: bool = True
    message: str = ""


Solve = Callable[[CurvatureOracle, Vector, float, float | None], Proposal]
"""solve(oracle, g, |g|, M) -> Proposal (M is None for the Newton baselines)."""

InitialM = Callable[[CurvatureOracle, Vector, float], float]
"""initial_M(oracle, g, |g|) -> first M of the ARC adaptation."""


def _count(oracle: CurvatureOracle, key: str) -> int:
    return int(getattr(oracle, "counters", {}).get(key, 0))


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _evaluate(oracle: CurvatureOracle, good: Any, k: int) -> tuple[float, Vector]:
    """(L, g) at the current weights; on NaN/inf restore ``good`` (if any) and raise NumericalError."""
    err: Exception | None = None
    try:
        loss, g = oracle.loss_and_gradient()
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
) -> OuterLoopState:
    """Run outer steps until |g| <= tol, ``max_steps`` accepted updates, or too many rejections.

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
    """
    space = oracle.space
    adaptive = cubic and options.M is None
    max_steps = options.max_steps if options.max_steps is not None else 20
    if cubic and not adaptive:
        state.M = options.M
    elif adaptive and state.M is None and options.M_init is not None:
        state.M = options.M_init
    bar = _progress(options, method, max_steps, state.accepted)
    unwatch = _watch_hvps(oracle, bar)
    good: Any = None  # snapshot of the weights before the last applied update (the last good point)
    cached: tuple[float, Vector] | None = None  # (L, g) kept across a rejection (same weights and sample)
    state.finished = False
    try:
        while True:
            t0 = time.perf_counter()
            h0, g0 = _count(oracle, "hvps"), _count(oracle, "gradients")
            k = state.step
            if cached is not None:
                loss, g = cached
                cached = None
            else:
                if stochastic:
                    oracle.resample(state.seed + k)
                loss, g = _evaluate(oracle, good, k)
            good = None
            gnorm = space.norm(g)
            state.final_loss, state.final_grad_norm = loss, gnorm
            if gnorm <= options.tol:
                state.stop_reason = "converged"
                break
            if state.accepted >= max_steps:
                state.stop_reason = "max_steps"
                break
            if adaptive and state.M is None:
                assert initial_M is not None, "adaptive M needs an initial_M estimate"
                state.M = max(float(initial_M(oracle, g, gnorm)), options.M_min)
            M = state.M if cubic else None
            try:
                prop = solve(oracle, g, gnorm, M)
            except NumericalError as e:
                raise NumericalError(
                    f"{method}: the subproblem solve at outer step {k} failed ({e}); the weights are those "
                    "of the last good point (where loss and gradient were finite)."
                ) from e
            if not space.is_finite(prop.step) or not math.isfinite(prop.step_norm):
                raise NumericalError(
                    f"{method}: the proposed step at outer step {k} has non-finite entries; the weights are "
                    "those of the last good point."
                )
            good = oracle.snapshot()
            oracle.apply_update(prop.step)
            accepted, trial, rho = True, None, None
            if adaptive:
                trial = _trial_loss(oracle)
                predicted = -prop.model_value
                if not predicted > 0:
                    oracle.restore(good)
                    good = None
                    space.release(prop.step)
                    space.release(g)
                    state.stop_reason = "no_model_decrease"
                    _record(state, on_step, k, loss, gnorm, prop, M, oracle, h0, g0, t0, False, trial, None)
                    break
                rho = (loss - trial) / predicted if _finite(trial) else -math.inf
                if rho >= options.arc_eta1:
                    if rho >= options.arc_eta2:
                        state.M = max(options.M_min, options.arc_shrink * state.M)
                else:
                    accepted = False
                    oracle.restore(good)
                    good = None
                    state.M = state.M * options.arc_grow
                    if not stochastic:
                        cached = (loss, g)
            space.release(prop.step)
            if cached is None:
                space.release(g)
            _record(state, on_step, k, loss, gnorm, prop, M, oracle, h0, g0, t0, accepted, trial, rho)
            if bar is not None:
                bar.update(1 if accepted else 0)
                bar.set_postfix(loss=f"{loss:.4g}", g=f"{gnorm:.2e}", M=f"{M:.2e}" if M else "-")
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
        unwatch()
        if bar is not None:
            bar.close()
    state.finished = True
    return state


def _trial_loss(oracle: CurvatureOracle) -> float:
    try:
        value = oracle.loss()
    except NumericalError:
        return math.nan
    return float(value)


def _record(
    state: OuterLoopState,
    on_step: StepCallback | None,
    k: int,
    loss: float,
    gnorm: float,
    prop: Proposal,
    M: float | None,
    oracle: CurvatureOracle,
    h0: int,
    g0: int,
    t0: float,
    accepted: bool,
    trial: float | None,
    rho: float | None,
) -> StepRecord:
    dt = time.perf_counter() - t0
    state.elapsed += dt
    rec = StepRecord(
        step=k,
        loss=float(loss),
        grad_norm=float(gnorm),
        step_norm=float(prop.step_norm),
        M=M,
        hvps=_count(oracle, "hvps") - h0,
        gradients=_count(oracle, "gradients") - g0,
        time=dt,
        accepted=accepted,
        krylov_iterations=int(prop.iterations),
        hard_case=bool(prop.hard_case),
        model_value=float(prop.model_value),
        trial_loss=trial,
        rho=rho,
        elapsed=state.elapsed,
        converged=bool(prop.converged),
        message=str(prop.message),
    )
    state.history.append(rec)
    state.step = k + 1
    if accepted:
        state.accepted += 1
        state.consecutive_rejections = 0
    else:
        state.consecutive_rejections += 1
    if on_step is not None:
        on_step(rec, state)
    return rec


def _watch_hvps(oracle: Any, bar: Any) -> Any:
    """Show the running HVP (= Lanczos iteration) count of the current step on ``bar`` while a long solve
    runs; returns the function that stops watching."""
    try:
        if bar is None or "hvp" in vars(oracle):
            return lambda: None
    except TypeError:  # no instance dict (slots): nothing to watch
        return lambda: None
    inner = oracle.hvp
    count = [0]

    def hvp(v: Any) -> Any:
        count[0] += 1
        bar.set_postfix_str(f"Lanczos/HVP {count[0]} this run")
        return inner(v)

    oracle.hvp = hvp
    return lambda: vars(oracle).pop("hvp", None)


def _progress(options: UnlearnOptions, method: str, total: int, done: int) -> Any:
    if not options.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc=method, unit="step", leave=False)
