r"""The worker's data parts and the objective it differentiates.

A worker holds row shards of up to three data sets, all sharded the same way (rank r takes rows r, r + W, ...
of each):

- the retain set (always): L_r(w) = (1/N_r) sum_i l_i(w);
- the forget set (objective ``grad_diff`` / ``npo``, ``gradient="influence"``, or the stop rule);
- calibration data the model never saw (the forgetting stop rule, :mod:`dist_unlearn.stopping`).

The objective is the one of :mod:`dist_unlearn.curvature.objective`, L = L_r + c F with

- ``grad_diff``: F = (1/N_f) sum_i l_i(w), c = -alpha;
- ``npo``: F = (2/beta) (1/N_f) sum_i softplus(beta (l_i^ref - l_i(w))), c = alpha, with l_i^ref the loss of
  forget row i at the weights as given, computed on the rank that holds row i before any update;
- ``match_unseen``: F = (1/N_f) sum_i c_i (1/2) d_i(w)^2, c = alpha, d_i the distance of l_i to its bin of
  the calibration losses (:mod:`dist_unlearn.targets`); the driver derives the bins from the stop rule's
  losses (it alone sees every row of a subject) and sends the (N_f, 3) table to every rank
  (:meth:`ObjectiveParts.set_forget_bins`) before the first gradient and after every check that stands;

so every term is a mean over its rows and the ranks' partial sums all-reduce to exactly L and its
derivatives (gradient, exact double-backward HVP, and the central finite difference of the combined
gradient, which equals the sum of the terms' finite differences). ``gradient="influence"`` takes the first
gradient as -(N_f/N_r) grad L_f (:meth:`ObjectiveParts.influence_gradient`).

Under ZeRO-3 every forward is a collective (parameters are all-gathered layer by layer), so every rank must
run the same number of forwards: every rank runs the same number of chunks (a rank with fewer rows runs a
missing chunk on one row with weight 0), and where a loss may run one forward per row (per-example losses,
the NPO term) the chunks are padded to the same number of rows, the padding masked out. A loss function is
assumed to run one forward per call (as ``loss_fn(model, batch)`` on a batch does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

OBJECTIVE_KEYS = ("objective", "gradient", "forget_weight", "beta")


@dataclass
class Part:
    """One data set held by a worker: its rows, collate and (for an objective term) loss and coefficient."""

    data: Any
    collate: Any
    num_rows: int
    loss_fn: Any = None
    coef: float = 0.0

    @property
    def rows(self) -> np.ndarray:
        return np.arange(self.num_rows)


def _as_torch_rows(data: Any) -> Any:
    try:
        import datasets

        if isinstance(data, datasets.Dataset) and data.format["type"] != "torch":
            return data.with_format("torch")
    except ImportError:  # pragma: no cover
        pass
    return data


def _indexed_type() -> type:
    from dist_unlearn.curvature.objective import IndexedRows

    return IndexedRows


class ObjectiveParts:
    """Mixin of :class:`~dist_unlearn.distributed.worker.DistWorker`: forget / calibration shards, the
    combined objective's chunks, the NPO references, the stop rule's losses and the influence gradient."""

    # ------------------------------------------------------------------ setup
    def _set_parts(self, forget: Any, calibration: Any, spec: dict[str, Any]) -> None:
        """Keep the forget and calibration sets (whole; this rank reads its rows) and the objective."""
        from torch.utils.data import DataLoader, default_collate

        self.objective = spec.get("objective", "retain")
        self.gradient_kind = spec.get("gradient", "full")
        self.forget_weight = float(spec.get("forget_weight", 1.0))
        self.beta = float(spec.get("beta", 0.1))
        collate = self.collate_fn or default_collate
        self.forget_part = self.calib_part = None
        for name, data in (("forget", forget), ("calibration", calibration)):
            if data is None:
                continue
            if isinstance(data, DataLoader):
                data = data.dataset
            data = _as_torch_rows(data)
            part = Part(data, collate, len(data))
            if name == "forget":
                self.forget_part = part
            else:
                self.calib_part = part
        needs_forget = (
            self.objective != "retain" or self.gradient_kind == "influence" or calibration is not None
        )
        if needs_forget and self.forget_part is None:
            from dist_unlearn.errors import DataError

            raise DataError(
                f"objective={self.objective!r}, gradient={self.gradient_kind!r} needs the forget set on the "
                "workers; pass forget=<Dataset>."
            )

    def _prepare_objective(self) -> None:
        """The forget term of the objective (:attr:`forget_term`); for NPO, this rank's reference losses at
        the given weights; for match_unseen, empty bins the driver fills. :attr:`forget_part` stays the plain
        forget rows (the stop rule's evidence)."""
        part = self.forget_part
        self.forget_term = None
        if self.objective == "match_unseen":
            from dist_unlearn.curvature.objective import BinForgetLoss, IndexedRows
            from dist_unlearn.targets import ForgetTargets

            rows = IndexedRows(part.data, part.collate)
            self.forget_bins = ForgetTargets()
            loss = BinForgetLoss(self.loss_fn, self.forget_bins)
            self.forget_term = Part(rows, rows.collate, part.num_rows, loss, self.forget_weight)
        elif self.objective == "grad_diff":
            self.forget_term = Part(part.data, part.collate, part.num_rows, self.loss_fn, -self.forget_weight)
        elif self.objective == "npo":
            import torch

            from dist_unlearn.curvature.objective import IndexedRows, NPOForgetLoss

            rows = IndexedRows(part.data, part.collate)
            indexed = Part(rows, rows.collate, part.num_rows)
            ref = torch.full((part.num_rows,), float("nan"), dtype=torch.float64)
            for idx, losses in self._per_example(part):  # rows this rank never reads stay NaN
                ref[torch.as_tensor(idx, dtype=torch.long)] = losses
            self.cost.add("loss", self._mine(part.rows), role="forget")
            indexed.loss_fn = NPOForgetLoss(self.loss_fn, ref, self.beta)
            indexed.coef = self.forget_weight
            self.forget_term = indexed

    # ------------------------------------------------------------------ chunks
    def _block_size(self) -> int:
        from dist_unlearn.curvature.local import DEFAULT_BATCH_SIZE

        return int(self.batch_size or DEFAULT_BATCH_SIZE)

    def _my_blocks(self, n: int) -> list[tuple[int, int]]:
        """This rank's micro-batches of a sample of n rows: positions [j B, (j + 1) B) for j = rank, rank + W,
        ... The in-process oracle reads the same micro-batches in order (B = the batch size), so every
        micro-batch's loss and gradient have the same bits in both runs; only their sum is split."""
        bs = self._block_size()
        return [(s, min(s + bs, n)) for s in range(self.rank * bs, n, self.world_size * bs)]

    def _chunks(self, part: Part, rows: np.ndarray, pad: bool = False):
        """Yield (batch, weight, this rank's row ids) over this rank's micro-batches of ``rows`` of ``part``.

        weight = rows in the micro-batch / len(rows). Under ZeRO-3 every forward is a collective, so every
        rank yields the same number of chunks: a rank without a micro-batch in the last round yields
        (one row, weight 0.0, []). ``pad`` (ZeRO-3 only, for losses that run one forward per row): every
        rank's chunk of a round has as many rows as the round's first micro-batch, filled up with copies of
        row ``rows[0]`` (index -1 for an indexed part); callers ignore the rows past the real ids.
        """
        from dist_unlearn.data.device import to_device

        n = len(rows)
        if n == 0:
            return
        bs = self._block_size()
        blocks = -(-n // bs)
        device = None if self.device.type == "cpu" else self.device
        for r in range(-(-blocks // self.world_size)):
            j = r * self.world_size + self.rank
            idx = rows[j * bs : min((j + 1) * bs, n)] if j < blocks else rows[:0]
            items = [part.data[int(i)] for i in idx]
            if self.stage == 3:
                first = r * self.world_size * bs
                want = min(bs, n - first) if pad else max(1, len(idx))
                filler = part.data[int(rows[0])]
                if isinstance(part.data, _indexed_type()):
                    filler = (filler[0], -1)
                items += [filler] * (want - len(items))
            if not items:
                continue
            yield to_device(part.collate(items), device), len(idx) / n, idx

    def _retain_part(self) -> Part:
        from torch.utils.data import default_collate

        return Part(self.data, self.collate_fn or default_collate, self.num_rows, self.loss_fn, 1.0)

    def _terms(self, rows: np.ndarray, *, retain: bool = True, forget: bool | None = None, scale: float = 1):
        """Yield (loss_fn, batch, weight) of the objective's terms: the retain loss on ``rows`` and, for a
        forgetting objective, the forget term on all forget rows (weights include the coefficient)."""
        if retain:
            part = self._retain_part()
            for batch, w in self._cached_chunks(part, rows):
                yield self.loss_fn, batch, scale * w
        if forget is None:
            forget = self.objective != "retain"
        if forget:
            part = self.forget_term
            # the NPO and bin terms mask padding rows (index -1): pad where the loss runs a forward per row
            pad = self.objective in ("npo", "match_unseen") and not _batched_per_example(self.loss_fn)
            for batch, w in self._cached_chunks(part, part.rows, pad=pad):
                yield part.loss_fn, batch, scale * part.coef * w

    def _cached_chunks(self, part: Part, rows: np.ndarray, pad: bool = False):
        """(batch, weight) of :meth:`_chunks` through this rank's
        :class:`~dist_unlearn.distributed.batches.BatchCache`: a fixed row sample (all retain rows, the
        solve's HVP sample, the forget rows) is collated once, not once per pass."""
        cache = getattr(self, "_batch_cache", None)
        if cache is None:
            from dist_unlearn.distributed.batches import BatchCache

            cache = self._batch_cache = BatchCache(max_entries=3)  # gradient rows, HVP rows, forget term
        return cache.batches(
            rows, part.data, lambda: ((b, w) for b, w, _ in self._chunks(part, rows, pad=pad))
        )

    def _count(self, kind: str, rows: np.ndarray) -> None:
        """Count this rank's examples of one objective pass: ``rows`` of the retain set (role "retain") and,
        for a forgetting objective, the forget term's rows (role "forget"); one call in all."""
        self.cost.add(kind, self._mine(rows), role="retain")
        if self.objective != "retain":
            self.cost.add(kind, self._mine(self.forget_part.rows), calls=0, role="forget")

    def set_forget_bins(self, table: Any) -> None:
        """The match_unseen bins of every forget row, (N_f, 3): lo, hi, weight (the driver's
        :class:`~dist_unlearn.targets.ForgetTargets` table)."""
        self.forget_bins.set_table(table)

    # ------------------------------------------------------------------ per-example losses
    def _per_example(self, part: Part, rows: np.ndarray | None = None):
        """Yield (global row ids, float64 losses) of this rank's share of ``rows`` of ``part`` (None: all its
        rows), forward only."""
        import torch

        from dist_unlearn.models.losses import per_example_losses

        model = self.engine if self.stage == 3 else self.module
        with torch.no_grad() if self.stage != 3 else _nullctx():
            for batch, w, idx in self._chunks(
                part, part.rows if rows is None else rows, pad=not _batched_per_example(self.loss_fn)
            ):
                losses = per_example_losses(self.loss_fn, model, batch).detach().double().cpu()
                if w > 0:
                    yield [int(i) for i in idx], losses[: len(idx)]
        self._release_z3()

    def retain_sample_losses(self, rows: list[int]) -> tuple[list[int], list[float]]:
        """This rank's per-example losses of the retained rows ``rows`` (row ids, losses): the stop rule's
        retain guard (:class:`dist_unlearn.stopping.RetainGuard`). Forward only, counted as ``loss`` work of
        the retained rows. Collective under ZeRO-3 (call on every rank)."""
        ids: list[int] = []
        values: list[float] = []
        for idx, losses in self._per_example(self._retain_part(), np.asarray(rows, dtype=np.int64)):
            ids.extend(idx)
            values.extend(float(x) for x in losses)
        self.cost.add("loss", len(ids), role="retain")
        return ids, values

    def membership_losses(self) -> dict[str, tuple[list[int], list[float]]]:
        """The stop rule's evidence: this rank's per-example forget and calibration losses (row ids, losses).

        Forward only, counted as ``loss`` work. Collective under ZeRO-3 (call on every rank).
        """
        out: dict[str, tuple[list[int], list[float]]] = {}
        for name, part in (("forget", self.forget_part), ("calibration", self.calib_part)):
            ids: list[int] = []
            values: list[float] = []
            for idx, losses in self._per_example(part):
                ids.extend(idx)
                values.extend(float(x) for x in losses)
            self.cost.add("loss", len(ids), role=name)
            out[name] = (ids, values)
        return out

    # ------------------------------------------------------------------ retain-only values
    def retain_loss(self) -> float:
        """L_r(w) alone (forward only) on the gradient sample (all rows unless ``resample`` fixed one), for
        the stats of a run whose objective is not L_r."""
        import torch

        self.cost.add("loss", self._mine(self.grad_rows), role="retain")
        with torch.no_grad() if self.stage != 3 else _nullctx():
            value, _ = self._loss_and_local_grad(
                self.grad_rows, need_grad=False, terms=self._terms(self.grad_rows, forget=False)
            )
        return value

    def influence_gradient(self, out: int) -> float:
        """The influence gradient of ``gradient="influence"``: stores g_0 = -(N_f/N_r) grad L_f under ``out``
        (one pass over this rank's forget rows; the driver anchors the retain objective at it). Returns
        |g_0| (the driver keeps it with the vector)."""
        self.cost.add("gradient", self._mine(self.forget_part.rows), role="forget")
        ratio = self.forget_part.num_rows / self.num_rows
        part = self.forget_part
        terms = ((self.loss_fn, b, -ratio * w) for b, w, _ in self._chunks(part, part.rows))
        _, g = self._loss_and_local_grad(None, terms=terms, need_loss=False)
        self.vecs[out] = g
        return self._norm_local(g)


def _batched_per_example(loss_fn: Any) -> bool:
    """The loss gives per-example losses from one forward over a batch (its own ``per_example``, or
    ``outputs`` + ``from_outputs``): chunks need no padding to keep the ranks' forwards in step."""
    if callable(getattr(loss_fn, "per_example", None)):
        return True
    return callable(getattr(loss_fn, "outputs", None)) and callable(getattr(loss_fn, "from_outputs", None))


class _nullctx:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
