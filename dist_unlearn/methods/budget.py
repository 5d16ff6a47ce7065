"""A cap on a run's cost in example passes (option ``max_example_passes``), checked before each unit of work.

The cost is the oracle's own counter (``oracle.cost``, :mod:`dist_unlearn.cost`): the number reported as
``stats["cost"]["example_passes"]``. Before an operation the loop asks whether it still fits:

    spent + cost(next operation) + reserve  >  cap   ->   do not start it (stop_reason "budget")

where ``reserve`` is the least work needed to finish the outer step cleanly: the ARC trial loss (one per
first-M try on the first step) and the loss and gradient at the new point, which every curvature run
evaluates before it stops (they give ``final_loss`` / ``final_grad_norm`` and the stop rules).

Each kind of operation is predicted by the average cost of the operations of that kind so far in this run
(``by_kind`` example passes / the oracle's call counters). Before the first of its kind an HVP is predicted by
the oracle's ``hvp_pass_cost()`` when it has one (the local oracles), else to cost three gradients (an exact
HVP on the gradient sample: an upper bound for sub-sampled, finite-difference and Gauss-Newton HVPs) and a
loss a third of a gradient (exact for the local oracle). The Krylov solves check before every HVP; damped /
pinv Newton and the GD cubic solver get a per-solve HVP limit instead (the GD solver's own fixed HVPs, its |H|
estimate and two more, included; a step is only started when one HVP fits, so a GD step started with less room
may exceed the cap by those). A run therefore ends at most one operation over the cap: in practice below it,
or over it by the first gradient when the cap is smaller than one gradient (the run then stops with the
weights unchanged).
"""

from __future__ import annotations

import math
from typing import Any

from dist_unlearn.curvature.oracle import CurvatureOracle
from dist_unlearn.methods.base import OuterLoopState
from dist_unlearn.options import UnlearnOptions

FIRST_HVP_GRADIENTS = 3.0
"""Before the first HVP of a run, one is predicted to cost this many gradients (an exact HVP on the gradient
sample; HVPs on a sub-sample or by finite differences cost less, so the prediction is an upper bound)."""

BUDGET = "budget"
"""``stop_reason`` of a run stopped by ``max_example_passes``."""

BUDGET_NOTE = "; stopped: budget"
"""Appended to the last step's message when ``max_example_passes`` stopped a first-order loop."""


class PassBudget:
    """The ``max_example_passes`` cap of one curvature run over ``oracle`` (inactive when ``cap`` is None).

    Args:
        cap: the most example passes the oracle may have counted when the run ends (None: no cap).
        oracle: the run's curvature oracle (its ``cost`` and ``counters`` are read, never changed).
    """

    def __init__(self, cap: float | None, oracle: CurvatureOracle):
        self.cap = None if cap is None else float(cap)
        self.oracle = oracle

    @property
    def active(self) -> bool:
        return self.cap is not None

    def _state(self) -> tuple[float, dict[str, float]]:
        """(example passes spent, predicted cost of one "gradient" / "loss" / "hvp")."""
        d = self.oracle.cost.as_dict()
        counters = getattr(self.oracle, "counters", {}) or {}
        by_kind = d.get("by_kind", {})

        def passes(kinds: list[str]) -> float:
            return sum(float(by_kind[k]["example_passes"]) for k in kinds if k in by_kind)

        def per_op(total: float, ops: int) -> float | None:
            return total / ops if ops > 0 and total > 0 else None

        n_grad = int(counters.get("gradients", 0))
        # loss_and_gradient counts a loss and a gradient: the forward-only evaluations are the difference.
        # A loss costs a third of a gradient on the same sample; "loss" passes without a counted loss (the
        # NPO reference forward) or gradients on another sample (the influence first gradient, over the
        # forget set) must not make either look cheaper: each is bounded below by the other.
        raw_loss = per_op(passes(["loss"]), max(1, int(counters.get("losses", 0)) - n_grad))
        raw_grad = per_op(passes(["gradient"]), n_grad)
        grad = max(raw_grad or 0.0, 3.0 * (raw_loss or 0.0)) or None
        loss = max(raw_loss or 0.0, (raw_grad or 0.0) / 3.0) or None
        hvp = per_op(passes([k for k in by_kind if k.startswith("hvp")]), int(counters.get("hvps", 0)))
        g = grad or 0.0
        if hvp is None:  # before the first HVP: the oracle's own count when it has one, else an upper bound
            hint = getattr(self.oracle, "hvp_pass_cost", None)
            hvp = float(hint()) if callable(hint) else FIRST_HVP_GRADIENTS * g
        unit = {
            "gradient": g,
            "hvp": hvp,
            "loss": loss if loss is not None else g / 3.0,
        }
        return float(d.get("example_passes", 0.0)), unit

    def fits(self, **ops: float) -> bool:
        """True when the operations ``ops`` (kind -> count: ``hvp=1, loss=1, gradient=1``) fit in the cap."""
        if self.cap is None:
            return True
        spent, unit = self._state()
        if spent >= self.cap:
            return False
        return spent + sum(unit[k] * n for k, n in ops.items()) <= self.cap

    def affordable_hvps(self, **reserve: float) -> int:
        """How many more HVPs fit after keeping ``reserve`` (kind -> count); a large number without a cap."""
        if self.cap is None:
            return 1 << 30
        spent, unit = self._state()
        room = self.cap - spent - sum(unit[k] * n for k, n in reserve.items())
        if room <= 0 or unit["hvp"] <= 0:
            return 0 if room <= 0 else 1 << 30
        return int(math.floor(room / unit["hvp"] + 1e-9))

    def stop_rule(self, hvps_per_iteration: int = 1, **reserve: float) -> Any:
        """A ``stop(k, more=1)`` for :func:`~dist_unlearn.solvers.cubic_subproblem`: True when ``more``
        further HVPs after the k-th Lanczos iteration (and, without a stored basis, the HVPs of the pass that
        rebuilds the step) no longer fit after ``reserve``. None without a cap."""
        if self.cap is None:
            return None

        def stop(k: int, more: int = 1) -> bool:
            rebuild = (k + more) if hvps_per_iteration > 1 else 0
            ops = dict(reserve)
            ops["hvp"] = ops.get("hvp", 0.0) + more + rebuild
            return not self.fits(**ops)

        return stop


def step_reserve(options: UnlearnOptions, state: OuterLoopState, adaptive: bool) -> dict[str, float]:
    """The work an outer step needs after its solve: its trial loss(es) (ARC; one per first-M try on the
    first adaptive step) and the loss and gradient at the next point."""
    tries = options.first_M_tries if adaptive and state.M is None else 1
    return {"loss": float(tries if adaptive else 0), "gradient": 1.0}


def budget_stop(
    budget: PassBudget, options: UnlearnOptions, state: OuterLoopState, adaptive: bool, resolving: bool
) -> str:
    """Returns "budget" when the cheapest possible outer step (one HVP, or none for a re-solve, plus
    :func:`step_reserve`; one more HVP for the first M estimate) no longer fits in ``max_example_passes``."""
    if not budget.active:
        return ""
    estimate = adaptive and state.M is None and options.M_init is None
    hvps = 0 if resolving else 1 + int(estimate)
    return "" if budget.fits(hvp=hvps, **step_reserve(options, state, adaptive)) else BUDGET


def solve_stop(options: UnlearnOptions, state: OuterLoopState | None, oracle: CurvatureOracle) -> Any:
    """The ``stop(k)`` rule of one Krylov solve of a cubic method under the cap (None without one): the next
    Lanczos iteration must leave room for :func:`step_reserve`."""
    if options.max_example_passes is None:
        return None
    adaptive = options.M is None
    if state is None:
        state = OuterLoopState(M=options.M)
    per_iteration = 1 if (options.store_basis or options.reorthogonalize) else 2
    budget = PassBudget(options.max_example_passes, oracle)
    return budget.stop_rule(per_iteration, **step_reserve(options, state, adaptive))


def max_iter_within(
    options: UnlearnOptions, oracle: CurvatureOracle, max_iter: int, trial: bool = False
) -> int:
    """``max_iter`` cut to the HVPs that still fit under the cap after the next point's loss and gradient
    (and the ARC trial loss when ``trial``); at least 1, as the loop only starts a step when one HVP fits.
    For solvers without a per-iteration stop (damped / pinv Newton, the GD cubic solver)."""
    if options.max_example_passes is None:
        return max_iter
    reserve = {"gradient": 1.0, "loss": 1.0 if trial else 0.0}
    room = PassBudget(options.max_example_passes, oracle).affordable_hvps(**reserve)
    return max(1, min(max_iter, room))
