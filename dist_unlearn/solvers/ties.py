"""Threshold tests that a last-bit difference cannot flip: every branching decision of the solvers and the
outer loop goes through these.

A sharded run and a one-process run reduce the same numbers in a different order (a float64 dot is the sum
of per-shard dots; a float32 gradient is summed over ranks), so a loss, a norm or a residual differs between
them in its last bits. A decision taken on a value that sits *on* its threshold (rho == eta, |g| == rtol
|g_0|, a residual == tol) then goes one way in one run and the other way in the other, and the two runs
follow different paths from there. Here a value within a relative band ``TIE_RTOL`` of its threshold counts
as meeting it, always in the same direction (accept the step, stop, keep the earlier candidate), so a tie
is decided alike in both runs. The band is ~80 float32 ulps: wider than the rounding differences of a
sharded reduction (a few float32 ulps of the reduced quantity), far narrower than any tolerance a user sets.

Example (rho = (L - L_trial) / predicted against eta; the band is relative to the losses, the quantities
rho was computed from, because their rounding is what moves rho)::

    rho_at_least(loss, trial, predicted, eta)  # loss - trial >= eta predicted - TIE_RTOL (|loss| + |trial|)
"""

from __future__ import annotations

import math

TIE_RTOL = 1e-5
"""Relative width of the tie band (~80 float32 ulps)."""


def at_most(x: float, limit: float, rtol: float = TIE_RTOL) -> bool:
    """x <= limit, with x up to ``rtol |limit|`` above the limit counted as on it (True)."""
    return x <= limit + rtol * abs(limit)


def rho_at_least(loss: float, trial: float, predicted: float, eta: float, rtol: float = TIE_RTOL) -> bool:
    """rho = (loss - trial) / predicted >= eta, a tie (within ``rtol (|loss| + |trial|)`` of the actual
    decrease) counted as meeting it. False when ``trial`` is not finite or ``predicted`` is not > 0.

    Args:
        loss: L at the current point.
        trial: L at the trial point.
        predicted: the model's predicted decrease -m(d) (> 0 for a useful step).
        eta: the ratio threshold (ARC's eta1 to accept, eta2 to shrink M).
        rtol: relative band width.
    """
    if not (math.isfinite(trial) and math.isfinite(loss) and predicted > 0):
        return False
    return (loss - trial) >= eta * predicted - rtol * (abs(loss) + abs(trial))


def clearly_less(a: float, b: float, rtol: float = TIE_RTOL) -> bool:
    """a < b by more than ``rtol (|a| + |b|)``: among tied candidates the one already chosen stays."""
    return a < b - rtol * (abs(a) + abs(b))
