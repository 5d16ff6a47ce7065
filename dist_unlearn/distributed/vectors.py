"""The worker's vector store: this rank's shards of the Krylov vectors, and the VectorSpace ops on them.

A vector is this rank's shard of a parameter-space vector, one flat float32 tensor kept in ``self.vecs`` under
the integer id the driver chose (see :mod:`dist_unlearn.distributed.worker` for the shard layouts). Dot
products are a local float64 dot plus an all-reduce, so only scalars ever leave a worker.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

SCALAR_ALLREDUCE_MAX = 64
"""An all-reduce of at most this many numbers is a scalar one (dots, norms, a loss), counted per rank."""


class VectorStore:
    """Mixin of :class:`~dist_unlearn.distributed.worker.DistWorker`: shards, collectives, vector ops.

    Expects ``vecs``, ``timer``, ``dist``, ``device``, ``local_len``, ``mask``, ``stage`` (and, for ZeRO 0-2,
    ``chunk``, ``lo``, ``hi``, ``n``) to be set by the worker's setup.
    """

    # ------------------------------------------------------------------ collectives
    def _allreduce(self, t, op: str = "sum"):
        t0 = time.perf_counter()
        if op == "max":
            self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        else:
            self.dist.all_reduce(t)
        self.timer.comm += time.perf_counter() - t0
        if t.numel() <= SCALAR_ALLREDUCE_MAX:  # counted: the bench and the cost model use it
            self.counters["scalar_allreduces"] = self.counters.get("scalar_allreduces", 0) + 1
        return t

    def _allgather_flat(self, local):
        """ZeRO 0-2: the full flat vector (length n) from every rank's chunk."""
        import torch

        t0 = time.perf_counter()
        out = torch.empty(self.chunk * self.world_size, dtype=local.dtype, device=local.device)
        self.dist.all_gather_into_tensor(out, local.contiguous())
        self.timer.comm += time.perf_counter() - t0
        return out[: self.n]

    def _my_chunk(self, full):
        """ZeRO 0-2: this rank's (padded) chunk of a full flat vector."""
        import torch

        out = torch.zeros(self.chunk, dtype=torch.float32, device=self.device)
        out[: self.hi - self.lo] = full[self.lo : self.hi]
        return out

    # ------------------------------------------------------------------ vector ops (VectorSpace)
    def scalar(self, x: float) -> float:
        import torch

        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        return float(self._allreduce(t)[0])

    def dot(self, a: int, b: int) -> float:
        return self._dots_local(self.vecs[a], [self.vecs[b]])[0]

    def dots(self, a: int, bs: list[int]) -> list[float]:
        """Several dot products with one max and one sum all-reduce (for re-orthogonalisation)."""
        return self._dots_local(self.vecs[a], [self.vecs[b] for b in bs])

    def axpy(self, a: float, x: int, y: int) -> None:
        self.vecs[y].add_(self.vecs[x], alpha=float(a))

    def scale(self, a: float, x: int) -> None:
        self.vecs[x].mul_(float(a))

    def copy(self, x: int, out: int) -> None:
        self.vecs[out] = self.vecs[x].clone()

    def zeros(self, out: int) -> None:
        import torch

        self.vecs[out] = torch.zeros(self.local_len, dtype=torch.float32, device=self.device)

    def lincomb(self, coeffs: list[float], xs: list[int], out: int) -> None:
        self.vecs[out] = self._lincomb_local(coeffs, [self.vecs[x] for x in xs])

    def _lincomb_local(self, coeffs: list[float], tensors: list[Any]):
        """sum_i c_i t_i accumulated in float64, returned as float32: the arithmetic of
        :class:`~dist_unlearn.linalg.TensorSpace`
        (:func:`~dist_unlearn.linalg.tensor_space.lincomb_tensor`)."""
        from dist_unlearn.linalg.tensor_space import lincomb_tensor

        return lincomb_tensor([float(c) for c in coeffs], tensors).float()

    def _dots_local(self, x, ys: list[Any]) -> list[float]:
        """[x . y for y in ys] over all ranks, reproducibly (:mod:`~dist_unlearn.linalg.exact_dot`, the
        arithmetic of :class:`~dist_unlearn.linalg.TensorSpace`): the global max |x_i y_i| of each product by
        one max all-reduce, then this rank's exact level sums by one sum all-reduce."""
        import torch

        from dist_unlearn.linalg.exact_dot import combine_levels, dot_level_sums, max_abs_product

        if not ys:
            return []
        local_max = [max_abs_product(x, y) for y in ys]
        maxes = self._allreduce(torch.tensor(local_max, dtype=torch.float64, device=self.device), op="max")
        sums = torch.stack(
            [dot_level_sums(x, y, float(m), self.n) for y, m in zip(ys, maxes.cpu(), strict=True)]
        )
        sums = self._allreduce(sums.to(self.device)).cpu()
        return [combine_levels(s) for s in sums]

    def orthonormal_start(self, v0: int, locked: list[int], watch: list[int], out: int) -> tuple[float, list]:
        """v0 projected twice off the ``locked`` vectors, normalised into ``out``; returns (its norm before
        normalising, dots of the result with ``watch``). The arithmetic of the op-by-op path of
        :class:`~dist_unlearn.solvers.LanczosProcess` (copy, dots + lincomb twice, norm, scale)."""
        import math

        start = self.vecs[v0].clone()
        basis = [self.vecs[i] for i in locked]
        for _ in range(2):
            coeffs = self._dots_local(start, basis)
            start = self._lincomb_local([1.0, *(-float(c) for c in coeffs)], [start, *basis])
        sq = self._dots_local(start, [start])[0]
        norm = math.sqrt(max(sq, 0.0)) if math.isfinite(sq) else sq
        if not (math.isfinite(norm) and norm > 0.0):
            return norm, []
        q = self._lincomb_local([1.0 / norm], [start])
        self.vecs[out] = q
        return norm, self._dots_local(q, [self.vecs[i] for i in watch]) if watch else []

    def is_finite(self, x: int) -> bool:
        import torch

        bad = float(not bool(torch.isfinite(self.vecs[x]).all()))
        return self.scalar(bad) == 0.0

    def release(self, ids: list[int]) -> None:
        for i in ids:
            self.vecs.pop(i, None)

    def num_vectors(self) -> int:
        return len(self.vecs)

    def fetch(self, x: int) -> np.ndarray:
        """This rank's shard as numpy (tests and debugging only: the solver never calls it)."""
        v = self.vecs[x]
        return v[self.mask].cpu().numpy() if self.stage != 3 else v.cpu().numpy()

    def put(self, arr: np.ndarray, out: int) -> None:
        """Store a shard given as numpy (tests only)."""
        import torch

        self.vecs[out] = torch.as_tensor(np.array(arr), dtype=torch.float32, device=self.device).clone()

    def save_vector(self, x: int, path: str) -> None:
        """Write this rank's shard of vector ``x`` to ``path`` ('{rank}' filled in; temp file + rename): a
        vector a restarted group needs again (the influence anchor)."""
        import os

        import torch

        path = path.format(rank=self.rank)
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save(self.vecs[x].detach().cpu(), tmp)
        os.replace(tmp, path)

    def load_vector(self, path: str, out: int) -> None:
        """Read this rank's shard written by :meth:`save_vector` into vector ``out``."""
        import torch

        self.vecs[out] = torch.load(path.format(rank=self.rank), map_location=self.device)

    def layout(self) -> dict[str, Any]:
        """What the driver needs to scatter/gather test vectors: stage, offsets or partition sizes."""
        if self.stage == 3:
            return {
                "stage": 3,
                "parts": [(int(p.ds_tensor.numel()), int(p.ds_numel)) for p in self.params],
                "shapes": [tuple(p.ds_shape) for p in self.params],
            }
        return {
            "stage": self.stage,
            "lo": self.lo,
            "hi": self.hi,
            "chunk": self.chunk,
            "shapes": [tuple(p.shape) for p in self.params],
        }

    def random_like(self, out: int, seed: int, kind: str = "normal") -> None:
        """This rank's shard of the random vector :meth:`TensorSpace.random_like` draws (standard normal or
        Rademacher, parameter by parameter from (seed, parameter index): the same vector in-process and for
        any number of ranks). The padding entries (mask False) are zero."""
        import torch

        from dist_unlearn.linalg.tensor_space import random_part

        if self.stage == 3:
            pieces = []
            for i, (p, size) in enumerate(zip(self.params, self.sizes, strict=True)):
                full = torch.zeros(size * self.world_size, dtype=torch.float64)
                full[: int(p.ds_numel)] = random_part(seed, i, int(p.ds_numel), kind)
                pieces.append(full[self.rank * size : (self.rank + 1) * size])
            r = torch.cat(pieces)
        else:
            full = torch.cat([random_part(seed, i, p.numel(), kind) for i, p in enumerate(self.params)])
            r = torch.zeros(self.local_len, dtype=torch.float64)
            r[: self.hi - self.lo] = full[self.lo : self.hi]
        self.vecs[out] = (r.float().to(self.device) * self.mask).contiguous()
