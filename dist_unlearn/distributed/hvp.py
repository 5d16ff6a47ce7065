"""The worker's weights, loss, gradient and HVP kinds (exact double backward, central finite difference).

The retain loss is L(w) = (1/N) sum_i l_i(w) over all N retain rows; rank r holds rows r, r + W, ... and
computes the partial sum (1/N) sum_{i in shard} l_i, so the all-reduced (summed) partials are exactly L and
its derivatives (a forgetting objective adds its forget term the same way, see
:mod:`~dist_unlearn.distributed.objective`). Every function here counts its examples in ``self.cost`` (a
:class:`~dist_unlearn.cost.CostCounter`): the driver sums the ranks' counters.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np


class GradHVP:
    """Mixin of :class:`~dist_unlearn.distributed.worker.DistWorker`: weights, loss, gradient, H v."""

    # ------------------------------------------------------------------ weights
    def _local_weights(self) -> list[Any]:
        if self.stage == 3:
            self._release_z3()
            return [p.ds_tensor for p in self.params]
        return [p.data for p in self.params]

    def _add_to_weights(self, local_vec, alpha: float, full=None) -> None:
        """w <- w + alpha * v for this rank's view of the weights (v given as a local shard).

        ZeRO 0-2 all-gathers v to the replicated weights; ``full`` passes an already gathered v (the FD HVP
        perturbs twice with the same v: one gather).
        """
        import torch

        if self.stage == 3:
            self._release_z3()
            offs = 0
            for p, size in zip(self.params, self.sizes, strict=True):
                p.ds_tensor.add_(local_vec[offs : offs + size].to(p.ds_tensor.dtype), alpha=alpha)
                offs += size
            return
        if full is None:
            full = self._allgather_flat(local_vec)
        offs = 0
        with torch.no_grad():
            for p in self.params:
                k = p.numel()
                p.data.add_(full[offs : offs + k].view_as(p).to(p.dtype), alpha=alpha)
                offs += k

    def _release_z3(self) -> None:
        """ZeRO-3 keeps gathered parameters alive between passes (reuse distance); partition them all so the
        next forward re-gathers from ``ds_tensor`` and sees the weights we wrote there."""
        if self.stage == 3:
            self.engine.optimizer.parameter_offload.partition_all_parameters()

    def _sync_master(self) -> None:
        """ZeRO-3: keep the optimizer's fp32 partition equal to the compute partition (never stepped)."""
        if self.stage != 3:
            return
        from deepspeed.utils import safe_set_local_fp32_param

        for p in self.params:
            safe_set_local_fp32_param(p, p.ds_tensor.float())

    def apply_update(self, d: int, scale: float = 1.0) -> None:
        t0 = time.perf_counter()
        self._add_to_weights(self.vecs[d], float(scale))
        self._sync_master()
        self.timer.compute += time.perf_counter() - t0

    def snapshot(self, sid: int) -> None:
        self.snaps[sid] = [w.detach().clone() for w in self._local_weights()]

    def restore(self, sid: int) -> None:
        for w, s in zip(self._local_weights(), self.snaps[sid], strict=True):
            w.copy_(s)
        self._sync_master()

    def drop_snapshot(self, sid: int) -> None:
        self.snaps.pop(sid, None)

    # ------------------------------------------------------------------ loss / gradient / HVP
    def _loss_and_local_grad(
        self, rows: np.ndarray, need_grad: bool = True, terms: Any = None, need_loss: bool = True
    ):
        """(L on ``rows``, this rank's shard of grad L) with every collective done.

        L is the objective (:mod:`~dist_unlearn.distributed.objective`): the retain loss on ``rows`` plus the
        forget term of a forgetting objective; ``terms`` ((loss_fn, batch, weight) triples) overrides it.
        ``need_loss=False`` (the FD HVP's passes) skips the loss all-reduce and returns NaN for L.
        """
        import torch

        terms = self._terms(rows) if terms is None else terms
        t0 = time.perf_counter()
        comm0 = self.timer.comm
        partial_loss, g = self._sum_terms(terms, need_grad)  # float64 sums (distributed.sums)
        if not need_loss:
            self.timer.compute += time.perf_counter() - t0 - (self.timer.comm - comm0)
            return math.nan, g
        loss = self._allreduce(torch.tensor([partial_loss], dtype=torch.float64, device=self.device))
        self.timer.compute += time.perf_counter() - t0 - (self.timer.comm - comm0)
        return float(loss[0]), g

    def _mine(self, rows: np.ndarray) -> int:
        """How many of ``rows`` this rank processes (its micro-batches' rows in a pass over them)."""
        return sum(e - s for s, e in self._my_blocks(len(rows)))

    def loss(self) -> float:
        import torch

        self.counters["losses"] += 1
        self._count("loss", self.grad_rows)
        with torch.no_grad() if self.stage != 3 else _nullctx():
            value, _ = self._loss_and_local_grad(self.grad_rows, need_grad=False)
        return value

    def loss_and_gradient(self, out: int) -> tuple[float, float]:
        """(L, |grad L|) with grad L stored under ``out`` (the norm spares the driver a round trip; NaN or
        inf when grad L has a non-finite entry)."""
        self.counters["gradients"] += 1
        self._count("gradient", self.grad_rows)
        value, g = self._loss_and_local_grad(self.grad_rows)
        self.vecs[out] = g
        return value, self._norm_local(g)

    def _norm_local(self, v) -> float:
        """|v| over all ranks, the value ShardedSpace.norm would get (a reproducible dot)."""
        sq = self._dots_local(v, [v])[0]
        return math.sqrt(sq) if sq >= 0 else sq

    def trial_losses(self, steps: list[int], sid: int) -> list[float]:
        """L(w + d) for each step id, the weights restored (from a snapshot under ``sid``) after each."""
        self.snapshot(sid)
        out = []
        try:
            for d in steps:
                self.apply_update(d)
                out.append(self.loss())
                self.restore(sid)
        finally:
            self.drop_snapshot(sid)
        return out

    def try_step(
        self, d: int, sid: int, with_loss: bool, arc: tuple | None = None, grad_out: int | None = None
    ) -> tuple[bool, float | None, tuple[float, float] | None]:
        """The trial point of an outer step in one call: (d finite?, L(w + d) or None, (L, |grad L|) or
        None). A finite d is applied after snapshotting the weights under ``sid``; a non-finite one leaves
        them alone. With ``arc`` = (L(w), predicted decrease, eta1, the trial loss if the driver knows it),
        when ARC accepts the trial point (the test the driver applies to the same numbers,
        ``solvers.ties.rho_at_least``) its gradient is evaluated too and stored under ``grad_out``."""
        import torch

        from dist_unlearn.solvers.ties import rho_at_least

        bad = float(not bool(torch.isfinite(self.vecs[d]).all()))
        if self.scalar(bad) != 0.0:
            return False, None, None
        self.snapshot(sid)
        self.apply_update(d)
        value = self.loss() if with_loss else None
        trial = value if with_loss else (arc[3] if arc is not None else None)
        grad = None
        if grad_out is not None and trial is not None and rho_at_least(arc[0], trial, arc[1], arc[2]):
            grad = self.loss_and_gradient(grad_out)
        return True, value, grad

    def hvp(self, v: int, out: int) -> None:
        self.vecs[out] = self._hvp_local(self.vecs[v])

    def _hvp_local(self, v_local):
        """This rank's shard of H v for a local shard of v (collectives inside), counted."""
        self.counters["hvps"] += 1
        self._count("hvp_fd" if self.hvp_mode == "fd" else "hvp_exact", self.hvp_rows)
        if self.hvp_mode == "fd":
            return self._hvp_fd(v_local)
        return self._hvp_exact(v_local)

    def _hvp_exact(self, v_local):
        """H v by double backward on the replicated module (ZeRO 0-2), micro-batch by micro-batch with the
        in-process oracle's function (:func:`~dist_unlearn.curvature.hvp_exact.exact_hvp_batch`), summed
        independently of the order (:mod:`~dist_unlearn.distributed.sums`), then sharded."""
        import torch

        from dist_unlearn.curvature.attention import math_sdpa
        from dist_unlearn.curvature.hvp_exact import exact_hvp_batch
        from dist_unlearn.linalg.compensated import Compensated

        full_v = self._allgather_flat(v_local)
        t0 = time.perf_counter()
        comm0 = self.timer.comm
        vs = self._param_views(full_v)
        acc = [Compensated(p.shape, self.device) for p in self.params]
        with math_sdpa():
            for loss_fn, batch, w in self._terms(self.hvp_rows):
                _, hv = exact_hvp_batch(loss_fn, self.module, batch, self.params, vs, "a micro-batch")
                for a, h in zip(acc, hv, strict=True):
                    a.add_(h.detach().to(torch.float64) * w)
        self.timer.compute += time.perf_counter() - t0 - (self.timer.comm - comm0)
        return self._reduced_shard(acc)

    def fd_step(self, v_local) -> float:
        """The central-difference step eps of :func:`dist_unlearn.curvature.hvp_fd.fd_epsilon` (the rule the
        in-process oracle uses), from |w| and |v| over all ranks (one all-reduce of both); ``fd_eps`` fixes
        the perturbation size h = eps |v| instead. 0.0 for v = 0."""
        import torch

        from dist_unlearn.curvature.hvp_fd import compute_dtype, fd_epsilon

        weights = self._local_weights()
        if self.stage == 3:
            # only the real entries: the partition padding is not a weight (see _layout); per parameter, so
            # no shard-sized float64 copy of the weights is made
            wsq, offs = 0.0, 0
            for w, size in zip(weights, self.sizes, strict=True):
                valid = int(self.mask[offs : offs + size].sum())
                wsq += float((w.detach().reshape(-1)[:valid].double() ** 2).sum())
                offs += size
        else:
            # replicated weights: each rank holds the full norm
            wsq = sum(float((w.double() ** 2).sum()) for w in weights) / self.world_size
        vsq = float((v_local.double() ** 2).sum())
        sums = torch.tensor([wsq, vsq], dtype=torch.float64, device=self.device)
        wsq_all, vsq_all = (float(x) for x in self._allreduce(sums))
        wnorm, vnorm = math.sqrt(max(wsq_all, 0.0)), math.sqrt(max(vsq_all, 0.0))
        if vnorm == 0.0:
            return 0.0
        if self.fd_eps is not None:
            return float(self.fd_eps) / vnorm
        return fd_epsilon(compute_dtype(weights), wnorm, vnorm, self.n)

    def scalar_norm(self, v_local) -> float:
        return math.sqrt(max(self.scalar(float((v_local.double() ** 2).sum())), 0.0))

    def _param_views(self, flat):
        """``flat`` cut like :meth:`_local_weights`: per ds_tensor partition (ZeRO-3), per parameter shape
        (ZeRO 0-2, ``flat`` then being the full gathered vector)."""
        views, offs = [], 0
        for w in self._local_weights():
            views.append(flat[offs : offs + w.numel()].view_as(w))
            offs += w.numel()
        return views

    def _hvp_fd(self, v_local):
        """H v ~ (grad L(w + eps v) - grad L(w - eps v)) / (2 eps) by
        :func:`dist_unlearn.curvature.hvp_fd.fd_hvp` on this rank's weights (ZeRO-3: its partitions and
        its shard of v; ZeRO 0-2: the replicated weights and the gathered v), each gradient pass returning
        this rank's shard of the gradient."""
        import torch

        from dist_unlearn.curvature.hvp_fd import fd_hvp

        eps = self.fd_step(v_local)
        if eps == 0.0:
            return torch.zeros_like(v_local)
        full = v_local if self.stage == 3 else self._allgather_flat(v_local)  # one gather, both passes

        def gradient():
            self._release_z3()  # ZeRO-3: the next forward re-gathers the perturbed partitions
            return (self._loss_and_local_grad(self.hvp_rows, need_loss=False)[1],)

        try:
            (hv,), _ = fd_hvp(gradient, self._local_weights(), self._param_views(full), eps=eps)
        finally:
            self._release_z3()
        return hv


class _nullctx:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
