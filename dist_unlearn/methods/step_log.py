"""Step records and progress display of the outer loop: one StepRecord per outer step, a progress bar
with the running HVP count while a long solve runs."""

from __future__ import annotations

import time
from typing import Any

from dist_unlearn.curvature.oracle import CurvatureOracle
from dist_unlearn.methods.base import OuterLoopState, StepCallback, StepRecord
from dist_unlearn.methods.proposal import Proposal
from dist_unlearn.options import UnlearnOptions


def count(oracle: CurvatureOracle, key: str) -> int:
    """The oracle's operation counter ``key`` (0 when it keeps none)."""
    return int(getattr(oracle, "counters", {}).get(key, 0))


def record_step(
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
    check: Any = None,
) -> StepRecord:
    dt = time.perf_counter() - t0
    state.elapsed += dt
    rec = StepRecord(
        step=k,
        loss=float(loss),
        grad_norm=float(gnorm),
        step_norm=float(prop.step_norm),
        M=M,
        hvps=count(oracle, "hvps") - h0,
        gradients=count(oracle, "gradients") - g0,
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
        forget_auc=None if check is None else float(check.auc),
        stop_decision="" if check is None else str(check.decision),
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


def watch_hvps(oracle: Any, bar: Any) -> Any:
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


def progress_bar(options: UnlearnOptions, method: str, total: int, done: int) -> Any:
    if not options.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc=method, unit="step", leave=False)
