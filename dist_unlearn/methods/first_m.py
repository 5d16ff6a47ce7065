"""The first adaptive step's M: a geometric range of M tried on one Krylov space (issue 7).

Each candidate is re-solved on the stored space (no HVP) and judged by one loss evaluation, so the first
step makes real progress instead of the tiny gradient steps a conservative M0 gives.
"""

from __future__ import annotations

import math

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
    is re-solved on it (no HVP), applied, and judged by one loss evaluation. Returns (proposal, M, trial loss)
    of the candidate with the largest actual decrease among those with rho >= eta1, else the largest M's
    (which ARC then rejects and grows, re-solving on the same space). The weights are left unchanged.
    """
    grid = [max(M0 / options.first_M_factor**j, options.M_min) for j in range(options.first_M_tries)]
    base = solve(oracle, g, gnorm, grid[-1])
    if base.krylov is None:  # the solver kept no space: nothing to re-solve on
        return base, grid[-1], trial_after(oracle, base)
    best: tuple[Proposal, float, float] | None = None
    first: tuple[Proposal, float, float] | None = None
    snap = oracle.snapshot()
    for i, M in enumerate(grid):
        prop = base if i == len(grid) - 1 else resolve(base.krylov, M)
        oracle.apply_update(prop.step)
        trial = trial_loss(oracle)
        oracle.restore(snap)
        predicted = -prop.model_value
        cand = (prop, M, trial)
        if first is None:
            first = cand
        if rho_at_least(loss, trial, predicted, options.arc_eta1) and (
            best is None or clearly_less(trial, best[2])
        ):
            if best is not None and best is not first:
                oracle.space.release(best[0].step)
            best = cand
        elif cand is not first:
            oracle.space.release(prop.step)
    assert first is not None
    chosen = best if best is not None else first
    if first is not chosen:
        oracle.space.release(first[0].step)
    chosen[0].krylov = base.krylov
    return chosen


def trial_after(oracle: CurvatureOracle, prop: Proposal) -> float:
    snap = oracle.snapshot()
    oracle.apply_update(prop.step)
    trial = trial_loss(oracle)
    oracle.restore(snap)
    return trial


def trial_loss(oracle: CurvatureOracle) -> float:
    try:
        value = oracle.loss()
    except NumericalError:
        return math.nan
    return float(value)
