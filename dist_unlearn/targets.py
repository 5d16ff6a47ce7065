r"""Where each forget row's loss should go: a bin of the unseen rows' loss distribution (``match_unseen``).

A subject (a person, an author, a document) counts as forgotten when its rows sit among data the model never
saw: its mean quantile q_S among the unseen rows is near 1/2 (:mod:`dist_unlearn.eval.subjects`). Pushing
every forget loss "as high as it goes" (gradient ascent, GradDiff, NPO) overshoots: rows fitted worse than
nearly every unseen row are conspicuous. This module gives each forget row a *bin* of the unseen losses
instead, so that a subject whose rows all sit in their bins has q_S within 1/(2 n_S) of 1/2.

**Bins.** Let u be the calibration rows' losses (data never trained on) and Q_u its empirical quantile
function (linear interpolation). For a subject S with n = n_S rows, sort its rows by their current loss;
the row of rank r (0-based) gets the bin

    [lo_i, hi_i] = [Q_u(r / n), Q_u((r + 1) / n)],

the r-th of n equal-probability slices of the unseen distribution: a quantile match (the 1-D optimal
transport map), so the rows keep their order and none has to cross another. A row inside its bin has
quantile in [r/n, (r+1)/n]; all rows inside give q_S in [1/2 - 1/(2n), 1/2 + 1/(2n)].

**Penalty.** With d_i the distance of l_i to its bin, d_i = max(lo_i - l_i, 0) + max(l_i - hi_i, 0), and m
the median unseen loss,

    F(w) = sum_i v_i (1/2) (d_i(w) / m)^2,     v_i = 1 / (n_subjects n_{S(i)})     (sum_i v_i = 1),

zero for rows already in their bin (left alone, so their subject's fit is not disturbed), least squares
outside it (a Gauss-Newton-friendly objective whose gradient grows with the distance, unlike the NPO term
that fades once a row has moved). Every subject weighs the same, whatever its number of rows. Distances are
in units of the median unseen loss, so that F starts near 1/2 for memorised rows whatever the task's loss
scale (a model trained from scratch whose unseen rows cost 5 nats, a fine-tuned one whose cost 1) and one
``forget_weight`` balances it against the retain term everywhere. Without subjects the forget set is one
group (the aggregate criterion).

The bins depend on the current losses (ranks) and on the unseen losses (which move a little as the model
changes): :meth:`ForgetTargets.update` recomputes them from a stop rule's evaluation, only at points the
rule keeps, so one outer step (its gradient, HVPs and trial losses) sees fixed bins. Holding the bins of
the current ranking fixed gives an upper bound of the subject's squared 1-D Wasserstein distance to the
unseen distribution; re-ranking at the new point lowers it again (a majorise-minimise scheme).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch

from dist_unlearn.errors import DataError

BIN_SPAN = 0.5
"""Default share of the unseen distribution the bins cover: every row is lifted at least to the unseen
losses' lower quartile (with span 1 the lowest bin starts at the smallest unseen loss, where a memorised row
can stay and still be extracted word for word)."""


def subject_groups(subjects: Sequence[Hashable] | None, n: int) -> list[np.ndarray]:
    """Row indices of each subject in order of first appearance; None: one group of all ``n`` rows."""
    if subjects is None:
        return [np.arange(n)] if n else []
    if len(subjects) != n:
        raise DataError(f"{len(subjects)} forget subject values for {n} forget rows: give one per row.")
    groups: dict[Hashable, list[int]] = {}
    for i, s in enumerate(subjects):
        groups.setdefault(s, []).append(i)
    return [np.asarray(rows) for rows in groups.values()]


def unseen_bins(
    forget_losses: Sequence[float] | np.ndarray,
    unseen_losses: Sequence[float] | np.ndarray,
    subjects: Sequence[Hashable] | None = None,
    span: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lo, hi, weight) of every forget row (module docstring), float64 arrays in the forget rows' order.

    ``span`` < 1 spreads the bins over the central ``span`` share of the unseen distribution only (the
    quantile levels a + (1 - 2a) r / n with a = (1 - span) / 2), so that no row is left in the tails.

    Raises:
        DataError: no unseen rows, non-finite losses, or a subject list of the wrong length.
    """
    f = np.asarray(forget_losses, dtype=np.float64).reshape(-1)
    u = np.asarray(unseen_losses, dtype=np.float64).reshape(-1)
    if u.size == 0:
        raise DataError("the unseen-loss bins need at least one calibration row (data the model never saw).")
    if not (np.all(np.isfinite(f)) and np.all(np.isfinite(u))):
        raise DataError("the unseen-loss bins got NaN or inf losses.")
    lo, hi, weight = np.empty_like(f), np.empty_like(f), np.empty_like(f)
    groups = subject_groups(subjects, f.size)
    for rows in groups:
        n = rows.size
        order = rows[np.argsort(f[rows], kind="stable")]
        a = (1.0 - span) / 2.0
        edges = np.quantile(u, a + (1.0 - 2.0 * a) * np.arange(n + 1) / n)
        lo[order], hi[order] = edges[:-1], edges[1:]
        weight[rows] = 1.0 / (len(groups) * n)
    return lo, hi, weight


def bin_penalty(losses: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """(1/2) d^2 per row, d = distance of the loss to [lo, hi] (0 inside)."""
    below = torch.clamp(lo - losses, min=0.0)
    above = torch.clamp(losses - hi, min=0.0)
    return 0.5 * (below * below + above * above)


class ForgetTargets:
    """The bins of every forget row, kept up to date by a stop rule's evaluations.

    Args:
        subjects: the subject of each forget row (None: the forget set is one group).
        span: the central share of the unseen distribution the bins cover (:func:`unseen_bins`; None:
            :data:`BIN_SPAN`).

    Attributes:
        table: float64 tensor (n_forget, 3): lo, hi and the weight v_i n_forget / m^2 (so the mean over rows
            of ``table[:, 2] * (1/2) d^2`` is F; losses take means over their rows). Empty until the first
            :meth:`update`.
        updates: how many times the bins were set.
        scale: m, the median unseen loss of the last update.
        marked: bool tensor (n_forget,) of the rows answered verbatim at the last check (:meth:`mark`), or
            None.
        skip_token: the token left out of the answers' leads (the end-of-text token; set by the method).
    """

    def __init__(self, subjects: Sequence[Hashable] | None = None, span: float | None = None) -> None:
        self.subjects = list(subjects) if subjects is not None else None
        self.span = float(span if span is not None else BIN_SPAN)
        self.table = torch.zeros(0, 3, dtype=torch.float64)
        self.updates = 0
        self.scale = 1.0
        self.marked: torch.Tensor | None = None
        self.skip_token: int | None = None

    def update(self, forget_losses: np.ndarray, unseen_losses: np.ndarray) -> None:
        """Recompute the bins from per-example losses at the current weights (module docstring)."""
        lo, hi, weight = unseen_bins(forget_losses, unseen_losses, self.subjects, self.span)
        scale = max(float(np.median(np.asarray(unseen_losses, dtype=np.float64))), 1e-6)
        self.table = torch.from_numpy(np.stack([lo, hi, weight * lo.size / scale**2], axis=1))
        self.scale = scale
        self.updates += 1

    def mark(self, verbatim: np.ndarray | None) -> None:
        """Mark the forget rows greedy decoding still answers word for word (a boolean per row, from the
        last stop check that stood); the ``match_unseen`` objective adds a lead term for them
        (:func:`dist_unlearn.answer_leads.lead_penalty`). None or no row: no term."""
        if verbatim is None or not np.any(verbatim):
            self.marked = None
            return
        self.marked = torch.from_numpy(np.asarray(verbatim, dtype=bool).reshape(-1).copy())

    def set_table(self, table: Any) -> None:
        """Take bins computed elsewhere (the driver sends them to Ray workers)."""
        self.table = torch.as_tensor(np.asarray(table, dtype=np.float64))
        self.updates += 1

    def penalty(self, losses: np.ndarray) -> float:
        """F at these per-example losses (for tests and reports)."""
        t = self.table.numpy()
        d = bin_penalty(
            torch.from_numpy(np.asarray(losses, dtype=np.float64)), self.table[:, 0], self.table[:, 1]
        )
        return float((d.numpy() * t[:, 2]).mean())

    def in_bins(self, losses: np.ndarray) -> np.ndarray:
        """Whether each forget row's loss is inside its bin."""
        t = self.table.numpy()
        x = np.asarray(losses, dtype=np.float64)
        return (x >= t[:, 0]) & (x <= t[:, 1])
