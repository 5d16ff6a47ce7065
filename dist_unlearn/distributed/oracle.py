"""The curvature oracle over a worker group: every vector it returns is a :class:`ShardedVector`."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from dist_unlearn.cost import CostCounter
from dist_unlearn.curvature.objective import LinearAnchor
from dist_unlearn.distributed.group import WorkerGroup
from dist_unlearn.distributed.space import ShardedSpace, ShardedVector
from dist_unlearn.errors import NumericalError


class RayOracle:
    """:class:`~dist_unlearn.curvature.oracle.CurvatureOracle` with model and data sharded over Ray ranks.

    L(w) = (1/|S|) sum_{i in S} loss(w; x_i) with S the retain set (or the mini-batch chosen by
    :meth:`resample`); each rank sums its rows, the partial sums are all-reduced. H v is the exact
    double-backward product under ZeRO 0-2 (``hvp="exact"``) or the central difference
    (grad L(w + eps v) - grad L(w - eps v)) / (2 eps) on each rank's fp32 shard (``hvp="fd"``, the only
    choice under ZeRO-3, where parameters are released between layers).

    Args:
        group: a :class:`WorkerGroup` already set up (``group.setup``).
        num_rows: retain rows (for resampling).
        grad_batch_size: rows per gradient sample after :meth:`resample` (None: all rows).
        hvp_batch_size: rows per HVP sample after :meth:`resample` (None: all rows).
        influence_first: the retain objective is anchored at the influence gradient g_0 = -(N_f/N_r)
            grad L_f (``gradient="influence"``; the workers hold the forget set): the first
            :meth:`loss_and_gradient` returns g_0, later ones g_0 plus the change of the rows' gradient.

    With a forgetting objective (workers set up with ``objective="grad_diff"`` / ``"npo"``), L is that
    objective (:mod:`dist_unlearn.distributed.objective`); :meth:`retain_loss` gives L_r alone.
    :attr:`stop_rule` (None, or a :class:`dist_unlearn.stopping.ForgetStopRule` over
    :meth:`membership_losses`) is read by the outer loop.
    """

    def __init__(
        self,
        group: WorkerGroup,
        *,
        num_rows: int,
        grad_batch_size: int | None = None,
        hvp_batch_size: int | None = None,
        influence_first: bool = False,
    ) -> None:
        self.group = group
        self.influence_first = influence_first
        self.anchor: LinearAnchor | None = None
        self.stop_rule: Any = None
        self.space = ShardedSpace(group)
        self.counters: dict[str, int] = {"gradients": 0, "hvps": 0, "losses": 0}
        self.num_rows = num_rows
        self.grad_batch_size = grad_batch_size
        self.hvp_batch_size = hvp_batch_size
        self._snap_ids = itertools.count(1)
        self.hvp_hook = None  # called before each HVP with the running count (fault-injection tests)

    def loss(self) -> float:
        self.counters["losses"] += 1
        value = float(self.group.execute_all("loss")[0])
        _check(value, "retain loss")
        return value if self.anchor is None else self.anchor.loss(value)

    def loss_and_gradient(self) -> tuple[float, ShardedVector]:
        """(L, grad L) at the current weights; the workers also report |grad L| and its finiteness with it
        (the outer loop's next two questions, answered from the space's memory without another round trip).
        With ``influence_first`` the retain objective is anchored at the stationary-point identity
        (:class:`dist_unlearn.curvature.objective.InfluenceFirstGradient`)."""
        self.counters["gradients"] += 1
        out = self.space.new_handle()
        value, norm = (float(x) for x in self.group.execute_all("loss_and_gradient", out.id)[0])
        _check(value, "retain loss")
        self.space.remember(out, norm=norm if math.isfinite(norm) else None, finite=math.isfinite(norm))
        if self.anchor is not None:
            return self.anchor.loss(value), self.anchor.gradient(out)
        if not self.influence_first:
            return value, out
        self.influence_first = False
        g0 = self.space.new_handle()
        norm0 = float(self.group.execute_all("influence_gradient", g0.id)[0])
        self.space.remember(g0, norm=norm0 if math.isfinite(norm0) else None, finite=math.isfinite(norm0))
        self.anchor = LinearAnchor(self.space, self.space.lincomb([1.0, -1.0], [out, g0]))
        self.space.release(out)
        return value, g0

    def gradient(self) -> ShardedVector:
        return self.loss_and_gradient()[1]

    def retain_loss(self) -> float:
        """L_r(w) alone (forward only), whatever the objective."""
        value = float(self.group.execute_all("retain_loss")[0])
        _check(value, "retain loss")
        return value

    def membership_losses(self) -> tuple[np.ndarray, np.ndarray]:
        """(forget losses, calibration losses) at the current weights, in row order: each rank evaluates its
        rows (forward only) and sends one float per row."""
        out = []
        replies = self.group.execute_all("membership_losses")
        for name in ("forget", "calibration"):
            ids = np.concatenate([np.asarray(r[name][0], dtype=np.int64) for r in replies])
            vals = np.concatenate([np.asarray(r[name][1], dtype=np.float64) for r in replies])
            losses = np.full(len(ids), np.nan)
            losses[ids] = vals  # ranks hold disjoint rows 0..n-1
            out.append(losses)
        return out[0], out[1]

    def retain_sample_losses(self, rows: list[int]) -> np.ndarray:
        """Per-example losses of the retained rows ``rows``, in that order (each rank its share)."""
        pos = {int(r): i for i, r in enumerate(rows)}
        out = np.full(len(rows), np.nan)
        for ids, vals in self.group.execute_all("retain_sample_losses", [int(r) for r in rows]):
            out[[pos[int(i)] for i in ids]] = np.asarray(vals, dtype=np.float64)
        return out

    def set_forget_bins(self, table: np.ndarray) -> None:
        """Send the match_unseen bins (one row per forget row: lo, hi, weight) to every rank (posted)."""
        self.group.post_all("set_forget_bins", np.asarray(table, dtype=np.float64))

    def hvp(self, v: ShardedVector) -> ShardedVector:
        """H v into a new handle (posted: the driver needs only the handle)."""
        if self.hvp_hook is not None:
            self.hvp_hook(self.counters["hvps"])
        self.counters["hvps"] += 1
        out = self.space.new_handle()
        self.group.post_all("hvp", v.id, out.id)
        return out

    def try_step(
        self, d: ShardedVector, with_loss: bool, arc: tuple | None = None
    ) -> tuple[Any, float | None, bool, tuple[float, ShardedVector] | None]:
        """One round trip for a trial point: the workers check d is finite and, if so, snapshot the weights,
        apply w <- w + d and (``with_loss``) evaluate L there; given ``arc`` = (L, predicted, eta1, known
        trial loss or None) and an ARC acceptance, also (L, grad L) there for the next outer step. Returns
        (snapshot or None, L or None, finite, (L, grad L) or None); d non-finite leaves the weights untouched
        (the in-process equivalent: :func:`dist_unlearn.methods.first_m.try_step`)."""
        sid = next(self._snap_ids)
        if self.anchor is not None:
            arc = None  # the workers' ARC test would see L without the anchor: the driver decides
        anchor_before = None if self.anchor is None else self.anchor.value
        out = self.space.new_handle() if arc is not None else None
        finite, value, grad = self.group.execute_all(
            "try_step", d.id, sid, bool(with_loss), arc, None if out is None else out.id
        )[0]
        if not finite:
            return None, None, False, None
        if self.anchor is not None:
            self.anchor.update(d, 1.0)
            value = None if value is None else self.anchor.loss(value)
        if with_loss:
            self.counters["losses"] += 1
        prepared = None
        if grad is not None:
            self.counters["gradients"] += 1
            g_loss, norm = (float(x) for x in grad)
            self.space.remember(out, norm=norm if math.isfinite(norm) else None, finite=math.isfinite(norm))
            prepared = (g_loss, out)
        elif out is not None:
            self.space.release(out)
        return _Snapshot(self.group, sid, anchor_before), value, True, prepared

    def lanczos_step(
        self,
        q: ShardedVector,
        q_prev: ShardedVector | None,
        beta_prev: float,
        others: list[ShardedVector],
        tnorm: float,
        breakdown_tol: float,
        watch: list[ShardedVector] = (),
    ) -> dict[str, Any]:
        """One fused Lanczos iteration on the workers (:mod:`dist_unlearn.distributed.fused`): one round trip.

        :class:`~dist_unlearn.solvers.LanczosProcess` calls this instead of ``hvp`` + dots + lincombs when
        the matvec it was given is this oracle's :meth:`hvp`.

        Returns:
            ``{"alpha", "beta", "coeffs", "breakdown", "watch", "next"}`` with ``next`` the handle of q_{j+1}
            (None on breakdown or a non-finite beta) and ``watch`` its dots with the ``watch`` vectors.
        """
        if self.hvp_hook is not None:
            self.hvp_hook(self.counters["hvps"])
        self.counters["hvps"] += 1
        out = self.space.new_handle()
        reply = dict(
            self.group.execute_all(
                "lanczos_step",
                q.id,
                None if q_prev is None else q_prev.id,
                float(beta_prev),
                [o.id for o in others],
                out.id,
                float(tnorm),
                float(breakdown_tol),
                [w.id for w in watch],
            )[0]
        )
        stored = reply["breakdown"] is False and np.isfinite(reply["beta"]) and np.isfinite(reply["alpha"])
        reply["next"] = out if stored else None
        if not stored:
            self.space.release(out)
        return reply

    @property
    def cost(self) -> CostCounter:
        """Examples processed per kind of work, summed over the ranks (each rank counts its own shard)."""
        total = CostCounter()
        for s in self.group.execute_all("stats"):
            total.merge(s["cost"])
        return total

    def trial_losses(self, steps: list[ShardedVector]) -> list[float]:
        """L(w + d) for each step d, weights restored after each (one round trip; NaN for a non-finite
        loss): the first adaptive step's candidates (:func:`dist_unlearn.methods.first_m.trial_losses`)."""
        sid = next(self._snap_ids)
        values = [float(v) for v in self.group.execute_all("trial_losses", [d.id for d in steps], sid)[0]]
        self.counters["losses"] += len(steps)
        if self.anchor is not None:  # L - c.(w + d - w_0) at each candidate; the c.d of all in one call
            moves = self.space.dots(self.anchor.c, list(steps))
            values = [self.anchor.loss(v) - float(c) for v, c in zip(values, moves, strict=True)]
        return values

    # Weight updates, snapshots and samples return nothing the driver needs: posted (WorkerGroup.post_all).
    def apply_update(self, d: ShardedVector, scale: float = 1.0) -> None:
        self.group.post_all("apply_update", d.id, float(scale))
        if self.anchor is not None:
            self.anchor.update(d, scale)

    def snapshot(self) -> Any:
        sid = next(self._snap_ids)
        self.group.post_all("snapshot", sid)
        return _Snapshot(self.group, sid, None if self.anchor is None else self.anchor.value)

    def restore(self, snap: Any) -> None:
        self.group.post_all("restore", snap.sid)
        if self.anchor is not None and snap.anchor_value is not None:
            self.anchor.value = snap.anchor_value

    @property
    def num_examples(self) -> int:
        """Number of retain rows (over all ranks)."""
        return self.num_rows

    def use_rows(self, grad_rows: list[int] | None, hvp_rows: list[int] | None) -> None:
        """Fix the gradient / loss rows and the HVP rows (global row ids, None: every row) on all ranks
        until the next :meth:`resample`; each rank reads its share of them (posted)."""
        self.group.post_all(
            "resample",
            None if grad_rows is None else [int(i) for i in grad_rows],
            None if hvp_rows is None else [int(i) for i in hvp_rows],
        )

    def resample(self, seed: int | None) -> None:
        """Draw fixed gradient / HVP row samples (same on all ranks, and the rows ``LocalOracle.resample``
        draws for the seed: :func:`dist_unlearn.curvature.sample.draw_samples`); None: all rows."""
        from dist_unlearn.curvature.sample import draw_samples

        if seed is None or (self.grad_batch_size is None and self.hvp_batch_size is None):
            self.group.post_all("resample", None, None)
            return
        grad_rows, hvp_rows = draw_samples(self.num_rows, self.grad_batch_size, self.hvp_batch_size, seed)
        self.group.post_all("resample", grad_rows, hvp_rows)


class _Snapshot:
    """Weights kept on the workers; freed when the snapshot object is dropped."""

    def __init__(self, group: WorkerGroup, sid: int, anchor_value: float | None = None) -> None:
        import weakref

        self.sid, self.anchor_value = sid, anchor_value
        weakref.finalize(self, group.submit_all, "drop_snapshot", sid)


def _check(value: float, what: str) -> None:
    if not np.isfinite(value):
        raise NumericalError(f"the {what} is {value} on the workers; it must be finite.")
