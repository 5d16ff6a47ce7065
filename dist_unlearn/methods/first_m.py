"""The first adaptive step's M: a geometric range of M tried on one Krylov space.

Each candidate is re-solved on the stored space (no HVP) and judged by one loss evaluation, so the first
step makes real progress instead of the tiny gradient steps a conservative M0 gives.
"""

from __future__ import annotations

import math
from typing import Any

from dist_unlearn.curvature.oracle import CurvatureOracle
from dist_unlearn.errors import NumericalError
from dist_unlearn.linalg import Vector
from dist_unlearn.methods.proposal import Proposal, Resolve, Solve
from dist_unlearn.options import UnlearnOptions
from dist_unlearn.solvers.ties import clearly_less, rho_at_least


def search_first_M(
    oracle: CurvatureOracle,
    solve: Solve,
    resolve: Resolve,
    g: Vector,
    gnorm: float,
    loss: float,
    M0: float,
    options: UnlearnOptions,
) -> tuple[Proposal, float, float]:
    """The first step's M from a geometric range M0, M0/f, ..., M0/f^(n-1) on ONE Krylov space.

    The space is built once, for the smallest M (the longest step needs the largest space); each candidate
    is re-solved on it (no HVP), applied, and judged by one loss evaluation (all of them in one call to the
    engine's workers, :func:`trial_losses`). Returns (proposal, M, trial loss)
    of the candidate with the largest actual decrease among those with rho >= eta1, else the largest M's
    (which ARC then rejects and grows, re-solving on the same space). The weights are left unchanged.
    """
    grid = [max(M0 / options.first_M_factor**j, options.M_min) for j in range(options.first_M_tries)]
    base = solve(oracle, g, gnorm, grid[-1])
    if base.krylov is None:  # the solver kept no space: nothing to re-solve on
        return base, grid[-1], trial_after(oracle, base)
    props = [base if i == len(grid) - 1 else resolve(base.krylov, M) for i, M in enumerate(grid)]
    trials = trial_losses(oracle, [p.step for p in props])  # one round trip on the engine
    best: tuple[Proposal, float, float] | None = None
    for prop, M, trial in zip(props, grid, trials, strict=True):
        if rho_at_least(loss, trial, -prop.model_value, options.arc_eta1) and (
            best is None or clearly_less(trial, best[2])
        ):
            best = (prop, M, trial)
    chosen = best if best is not None else (props[0], grid[0], trials[0])
    for prop in props:
        if prop is not chosen[0]:
            oracle.space.release(prop.step)
    chosen[0].krylov = base.krylov
    return chosen


def trial_losses(oracle: CurvatureOracle, steps: list[Vector]) -> list[float]:
    """L(w + d) for each step d (NaN where it is not finite), the weights left unchanged. An oracle with
    its own ``trial_losses`` (the Ray engine: one round trip for all of them) does it in one call."""
    fused = getattr(oracle, "trial_losses", None)
    if callable(fused):
        return [float(x) for x in fused(steps)]
    snap = oracle.snapshot()
    out = []
    for step in steps:
        oracle.apply_update(step)
        out.append(trial_loss(oracle))
        oracle.restore(snap)
    return out


def trial_after(oracle: CurvatureOracle, prop: Proposal) -> float:
    snap = oracle.snapshot()
    oracle.apply_update(prop.step)
    trial = trial_loss(oracle)
    oracle.restore(snap)
    return trial


def try_step(
    oracle: CurvatureOracle, step: Vector, with_loss: bool, arc: tuple | None = None
) -> tuple[Any, float | None, bool, tuple[float, Vector] | None]:
    """The trial point of an outer step: (snapshot of the weights before, L at w + step or None, finite,
    prepared (L, grad L) at w + step or None).

    A non-finite step is not applied (snapshot None, finite False). An oracle with its own ``try_step`` (the
    Ray engine) does it all in one call and, given ``arc`` = (L, predicted decrease, eta1, trial loss if
    already known else None), also evaluates the gradient at the trial point when ARC will accept it
    (``rho_at_least``: the decision the outer loop takes from the same numbers), which the next outer step
    would ask for anyway. Here: snapshot, apply, loss; nothing prepared.
    """
    fused = getattr(oracle, "try_step", None)
    if callable(fused):
        return fused(step, with_loss, arc)
    if not oracle.space.is_finite(step):
        return None, None, False, None
    good = oracle.snapshot()
    oracle.apply_update(step)
    return good, (trial_loss(oracle) if with_loss else None), True, None


def trial_loss(oracle: CurvatureOracle) -> float:
    try:
        value = oracle.loss()
    except NumericalError:
        return math.nan
    return float(value)
