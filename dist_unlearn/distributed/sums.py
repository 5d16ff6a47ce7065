"""Sums over the rows that do not depend on how the rows are split over ranks.

A sharded run and a one-process run must reach the same weights (the engine's agreement target), and on
flat or degenerate problems (a model trained to zero loss) the outer loop amplifies any difference in the
last bits of a gradient into a different trajectory. So the engine computes exactly what the in-process
oracle computes, in another order only where the order cannot show:

- both read the same micro-batches (positions [j B, (j + 1) B) of the sorted row sample; rank r takes
  j = r, r + W, ...: :meth:`~dist_unlearn.distributed.objective.ObjectiveParts._my_blocks`), so every
  micro-batch's loss l_j and gradient g_j (float32) have the same bits;
- the terms (c w_j) g_j are summed in double-double (:class:`~dist_unlearn.linalg.compensated.Compensated`)
  and rounded to float32 once, which gives the same value for any order of the terms: each rank sums its
  own, then the ranks' (hi, lo) pairs are exchanged (an all-to-all: every rank receives the pairs of the
  entries it owns) and merged in rank order. Under ZeRO-3 this happens per parameter in a tensor hook during
  the backward pass (:meth:`Float64Sums._z3_hook`): DeepSpeed's own float32 reduce-scatter still runs, and
  its result is not used;
- dot products are reproducible too (:mod:`~dist_unlearn.linalg.exact_dot`), and vector updates are
  elementwise.

The cost: the gradient exchange moves two float64 numbers per entry (four times float32's bytes; under
ZeRO-3 on top of DeepSpeed's float32 reduce-scatter, which cannot be switched off) and each rank keeps two
float64 accumulators of its gradient (ZeRO 0-2: of the whole gradient; ZeRO-3: of its partition).
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

Z3_EXCHANGE_ELEMENTS = 1 << 20
"""Elements of the float64 buffers of the ZeRO-3 gradient exchange per slice, over all ranks (8 MiB each)."""


class Float64Sums:
    """Mixin of :class:`~dist_unlearn.distributed.worker.DistWorker`: order-independent gradient sums
    (module docstring)."""

    def _install_z3_hooks(self) -> None:
        """ZeRO-3: a hook on every trainable parameter that sends each rank's share of its gradient term to
        the partition's owner while :attr:`_z3_acc` is set (see :meth:`_z3_hook`)."""
        self._z3_acc: list[Any] | None = None
        self._z3_weight = 0.0
        for i, p in enumerate(self.params):
            p.register_hook(partial(self._z3_hook, i))

    def _z3_hook(self, i: int, grad: Any) -> None:
        """acc_i += the terms w_rank grad_rank of every rank for this rank's partition, in rank order (the
        in-process oracle's chunk order); the gradient itself passes on unchanged to DeepSpeed. The exchange
        runs in slices of ``Z3_EXCHANGE_ELEMENTS`` float64 numbers over all ranks, so its buffers stay small
        for any parameter size."""
        if self._z3_acc is None:
            return None
        import torch

        g = grad.detach().reshape(-1)
        size, n, W = self.sizes[i], g.numel(), self.world_size
        step = max(1, Z3_EXCHANGE_ELEMENTS // W)
        for start in range(0, size, step):
            m = min(step, size - start)
            buf = torch.zeros(W, m, dtype=torch.float64, device=g.device)
            for r in range(W):  # rank r's partition entries [start, start + m) of this rank's term
                lo, hi = r * size + start, min(r * size + start + m, n)
                if hi > lo:
                    buf[r, : hi - lo] = g[lo:hi]
            buf.mul_(self._z3_weight)
            pieces = self._all_to_all(buf)
            for r in range(W):
                self._z3_acc[i].add_at_(start, pieces[r])
        return None

    def _all_to_all(self, t: Any) -> Any:
        """Rows r of ``t`` (first dim W) go to rank r; returns the rows received, in rank order."""
        import torch

        t0 = time.perf_counter()
        out = torch.empty_like(t)
        self.dist.all_to_all_single(out, t.contiguous())
        self.timer.comm += time.perf_counter() - t0
        return out

    def _sum_terms(self, terms: Any, need_grad: bool) -> tuple[float, Any]:
        """(sum_k w_k l_k, this rank's shard of sum_k w_k grad l_k as float32 or None) over (loss_fn, batch,
        weight) terms: this rank's partial loss (the caller all-reduces it) and the fully summed gradient
        shard."""
        import torch

        from dist_unlearn.curvature.attention import math_sdpa
        from dist_unlearn.linalg.compensated import Compensated

        loss = 0.0
        if self.stage == 3:
            # Forward/backward through the engine: ZeRO-3 gathers the parameters layer by layer.
            if need_grad:
                self._z3_acc = [Compensated((s,), self.device) for s in self.sizes]
            try:
                with math_sdpa():  # the attention kernel the in-process oracle uses
                    for loss_fn, batch, w in terms:
                        out = loss_fn(self.engine, batch)
                        loss += w * float(out.detach().double())
                        if need_grad:
                            self._z3_weight = w
                            self.engine.backward(out)
                g = None
                if need_grad:
                    g = torch.cat([a.rounded(torch.float32) for a in self._z3_acc]) * self.mask
            finally:
                self._z3_acc = None
                if need_grad:
                    self.engine.optimizer.zero_grad()
                self._release_z3()
            return loss, g
        acc = [Compensated(p.shape, self.device) for p in self.params]
        with math_sdpa():
            for loss_fn, batch, w in terms:
                out = loss_fn(self.module, batch)
                loss += w * float(out.detach().double())
                if need_grad:
                    grads = torch.autograd.grad(out, self.params, allow_unused=True)
                    for a, gi in zip(acc, grads, strict=True):
                        if gi is not None:
                            a.add_(gi.to(torch.float64) * w)
        if not need_grad:
            return loss, None
        return loss, self._reduced_shard(acc)

    def _reduced_shard(self, acc: list[Any]) -> Any:
        """ZeRO 0-2: this rank's chunk of the sum over ranks of the per-parameter accumulators: the ranks'
        (hi, lo) of each chunk go to its owner (one all-to-all), merged in rank order, rounded once."""
        import torch

        from dist_unlearn.linalg.compensated import Compensated

        W, c = self.world_size, self.chunk
        padded = []
        for part in ("hi", "lo"):
            flat = torch.zeros(W * c, dtype=torch.float64, device=self.device)
            values = torch.cat([getattr(a, part).reshape(-1) for a in acc])
            flat[: values.numel()] = values
            padded.append(flat.view(W, c))
        acc.clear()
        pairs = torch.stack(padded, dim=1)  # (W, 2, c): row r = (hi, lo) of rank r's chunk
        received = self._all_to_all(pairs)
        total = Compensated((c,), self.device)
        for s in range(W):
            total.merge_(received[s, 0], received[s, 1])
        return total.rounded(torch.float32) * self.mask
