"""The fused Lanczos iteration: one driver call per iteration, scalars all-reduced among the ranks.

One call of :meth:`FusedLanczos.lanczos_step` on every rank does what
:meth:`dist_unlearn.solvers.LanczosProcess.step` does with separate vector operations, in the same order and
with the same arithmetic (float64 dots, float64-accumulated linear combinations rounded to float32):

    w     = H q_j                                       (the HVP, collectives inside)
    alpha = q_j . w                                     (all-reduce 1: one float)
    w     = w - alpha q_j - beta_{j-1} q_{j-1}
    c     = [o . w for o in locked + basis]              (all-reduce 2: k floats; reorthogonalisation only)
    w     = w - sum_i c_i o_i
    beta  = |w|                                         (all-reduce 3: one float)
    q_{j+1} = w / beta   unless beta <= tol * max(||T||_est, |alpha| + beta + beta_{j-1})  (breakdown)

Every rank computes the same scalars (they come out of the same all-reduces), so the breakdown decision is
taken identically everywhere and the driver receives one small reply per iteration: alpha, beta, c and the
breakdown flag.
"""

from __future__ import annotations

import math
import time
from typing import Any


class FusedLanczos:
    """Mixin of :class:`~dist_unlearn.distributed.worker.DistWorker`: the one-call Lanczos iteration."""

    def lanczos_step(
        self,
        q: int,
        q_prev: int | None,
        beta_prev: float,
        others: list[int],
        out: int,
        tnorm: float,
        breakdown_tol: float,
        watch: list[int] | None = None,
    ) -> dict[str, Any]:
        """One Lanczos iteration on the shards (see the module docstring); stores q_{j+1} under ``out``.

        Args:
            q: id of q_j.
            q_prev: id of q_{j-1} (None at the first iteration).
            beta_prev: beta_{j-1} (0 at the first iteration).
            others: ids of the vectors to reorthogonalise against (locked + basis; empty: none).
            out: id for q_{j+1} (not stored on breakdown or when beta is not finite).
            tnorm: the driver's running estimate of ||T|| before this iteration.
            breakdown_tol: relative breakdown threshold.
            watch: ids of vectors whose dots with q_{j+1} are wanted too (the hard-case probe's coupling).

        Returns:
            ``{"alpha", "beta", "coeffs", "breakdown", "watch"}`` (identical on every rank).
        """
        t0, compute0, comm0 = time.perf_counter(), self.timer.compute, self.timer.comm
        qv = self.vecs[q]
        w = self._hvp_local(qv)
        alpha = self._dots_local(qv, [w])[0]
        if not math.isfinite(alpha):
            return {"alpha": alpha, "beta": math.nan, "coeffs": [], "breakdown": False}
        if q_prev is None:
            w = self._lincomb_local([1.0, -alpha], [w, qv])
        else:
            w = self._lincomb_local([1.0, -alpha, -float(beta_prev)], [w, qv, self.vecs[q_prev]])
        coeffs: list[float] = []
        if others:
            basis = [self.vecs[o] for o in others]
            coeffs = self._dots_local(w, basis)
            w = self._lincomb_local([1.0, *(-c for c in coeffs)], [w, *basis])
        beta = math.sqrt(max(self._dots_local(w, [w])[0], 0.0))
        result = {"alpha": alpha, "beta": beta, "coeffs": coeffs, "breakdown": False, "watch": []}
        if math.isfinite(beta):
            tn = max(float(tnorm), abs(alpha) + beta + float(beta_prev))
            if beta <= breakdown_tol * tn:
                result["breakdown"] = True
            else:
                w.mul_(1.0 / beta)
                self.vecs[out] = w
                if watch:
                    result["watch"] = self._dots_local(w, [self.vecs[i] for i in watch])
        # all of this call's worker time that is not a collective (the HVP's weight copies included)
        self.timer.compute = compute0 + time.perf_counter() - t0 - (self.timer.comm - comm0)
        return result
