"""One Ray actor = one torch.distributed rank with a DeepSpeed engine and a shard of the retain data.

Vectors live here, in :attr:`DistWorker.vecs`, keyed by the integer handle id the driver chose. A vector is
this rank's *shard* of a parameter-space vector (one flat float32 tensor):

- ZeRO 0/1/2: the flattened trainable parameters are cut into ``W`` equal chunks of ``c = ceil(n / W)``
  entries (the last one zero-padded); rank r owns entries ``[r c, (r + 1) c)``.
- ZeRO 3: the concatenation of this rank's ``p.ds_tensor`` partitions, so vector shards are partitioned
  exactly like the parameter shards (padding entries are kept at zero by a mask).

Dot products are a local float64 dot plus an all-reduce, so only scalars ever leave a worker.

The retain loss is L(w) = (1/N) sum_i l_i(w) over all N retain rows; rank r holds rows r, r + W, ... and
computes the partial sum (1/N) sum_{i in shard} l_i, so the all-reduced (summed) partials are exactly L and
its derivatives.
"""

from __future__ import annotations

import math
import os
import time
from datetime import timedelta
from typing import Any

import numpy as np


class _Timer:
    def __init__(self) -> None:
        self.compute = 0.0
        self.comm = 0.0


class DistWorker:
    """The Ray actor body (``ray.remote``-wrapped by :class:`~dist_unlearn.distributed.group.WorkerGroup`).

    Args:
        rank: torch.distributed rank of this actor.
        world_size: number of ranks.
        use_gpu: nccl + CUDA when True, gloo + CPU otherwise.
        num_threads: torch intra-op threads for this rank (its CPU slot).
    """

    def __init__(self, rank: int, world_size: int, use_gpu: bool = False, num_threads: int = 1) -> None:
        self.rank, self.world_size = rank, world_size
        self.use_gpu = use_gpu
        # DeepSpeed picks its accelerator when it is first imported: set it before anything imports it.
        if not use_gpu:
            os.environ["DS_ACCELERATOR"] = "cpu"
        import torch

        torch.set_num_threads(max(1, int(num_threads)))
        self.vecs: dict[int, Any] = {}
        self.snaps: dict[int, list[Any]] = {}
        self.timer = _Timer()
        self.counters = {"gradients": 0, "hvps": 0, "losses": 0}
        self.engine = None

    # ------------------------------------------------------------------ setup
    def pid(self) -> int:
        return os.getpid()

    def address(self) -> tuple[str, int]:
        """(node IP, a free TCP port on it): the rendezvous point when this actor is rank 0."""
        import socket

        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind(("", 0))
            return ip, int(s.getsockname()[1])

    def setup(
        self,
        master_addr: str,
        master_port: int,
        spec: dict[str, Any],
        model_blob: Any,
        loss_blob: Any,
        data_blob: Any,
    ) -> dict[str, Any]:
        """Rendezvous, build the model and the DeepSpeed engine, and shard the retain data.

        Must be called on all ranks concurrently (``init_distributed`` is a rendezvous).

        Returns:
            a small dict: number of trainable parameters, local shard length, local rows.
        """
        # torch.distributed (env://) and DeepSpeed read these: set them before deepspeed is imported.
        os.environ.update(
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK="0" if self.use_gpu else str(self.rank),
            LOCAL_SIZE=str(self.world_size),
        )
        import cloudpickle
        import deepspeed
        import torch

        # DeepSpeed would JIT-compile its shared-memory CPU all-reduce (tens of seconds per rank); we call
        # torch.distributed directly, so skip it.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(
            dist_backend="nccl" if self.use_gpu else "gloo",
            timeout=timedelta(seconds=float(spec.get("timeout_s", 300))),
            verbose=False,
        )
        self.dist = torch.distributed
        self.device = torch.device("cuda", 0) if self.use_gpu else torch.device("cpu")
        self.stage = int(spec["zero_stage"])
        self.hvp_mode = spec["hvp"]
        self.fd_eps = spec.get("fd_eps")
        self.batch_size = spec.get("batch_size")
        self.collate_fn = cloudpickle.loads(spec["collate_fn"]) if spec.get("collate_fn") else None
        torch.manual_seed(int(spec.get("seed", 0)))

        if model_blob is not None:
            model = cloudpickle.loads(model_blob)
        else:
            from dist_unlearn.models import load_model

            model = load_model(spec["model_path"], **spec.get("model_kwargs", {}))
        self._model_blob, self._model_spec = model_blob, spec
        if loss_blob is not None:
            self.loss_fn = cloudpickle.loads(loss_blob)
        else:
            from dist_unlearn.models import default_loss_fn

            self.loss_fn = default_loss_fn(model)
        model.eval()  # dropout off: the oracle must be deterministic
        model.to(self.device)
        self.param_names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            from dist_unlearn.errors import ModelError

            raise ModelError(
                "the model has no trainable parameters (requires_grad=True); nothing to unlearn."
            )
        optimizer = torch.optim.SGD(params, lr=0.0)  # never stepped: ZeRO needs one to partition grads
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=spec["ds_config"])
        self.engine = engine
        self.module = engine.module
        self.module.eval()
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self._layout()

        data = cloudpickle.loads(data_blob)
        self._set_data(data)
        return {
            "num_params": self.n,
            "local_len": self.local_len,
            "local_rows": len(self.shard_rows),
            "rows": self.num_rows,
        }

    def _layout(self) -> None:
        import torch

        W, r = self.world_size, self.rank
        if self.stage == 3:
            self.sizes = [p.ds_tensor.numel() for p in self.params]
            self.n = sum(int(p.ds_numel) for p in self.params)
            mask = []
            for p in self.params:
                ps = p.ds_tensor.numel()
                valid = max(0, min(ps, int(p.ds_numel) - r * ps))
                m = torch.zeros(ps, dtype=torch.bool)
                m[:valid] = True
                mask.append(m)
                # DeepSpeed allocates the partition with torch.empty: the padding past ds_numel on the last
                # rank holds uninitialised memory (it may be inf/NaN). Zero it so no norm ever sees it.
                with torch.no_grad():
                    p.ds_tensor.data[valid:].zero_()
            self.mask = torch.cat(mask).to(self.device)
            self.local_len = int(self.mask.numel())
        else:
            self.n = sum(p.numel() for p in self.params)
            self.chunk = math.ceil(self.n / W)
            self.lo = min(r * self.chunk, self.n)
            self.hi = min((r + 1) * self.chunk, self.n)
            self.local_len = self.chunk
            self.mask = torch.zeros(self.chunk, dtype=torch.bool, device=self.device)
            self.mask[: self.hi - self.lo] = True

    def _set_data(self, data: Any) -> None:
        import torch

        try:
            import datasets

            if isinstance(data, datasets.Dataset) and data.format["type"] != "torch":
                data = data.with_format("torch")
        except ImportError:  # pragma: no cover
            pass
        if isinstance(data, torch.utils.data.DataLoader):
            self.collate_fn = self.collate_fn or data.collate_fn
            data = data.dataset
        self.data = data
        self.num_rows = len(data)
        self.all_rows = np.arange(self.num_rows)
        self.grad_rows = self.hvp_rows = self.all_rows
        self.shard_rows = self.all_rows[self.rank :: self.world_size]

    def resample(self, grad_rows: list[int] | None, hvp_rows: list[int] | None) -> None:
        """Fix the gradient / HVP samples (global row indices, identical on every rank)."""
        self.grad_rows = self.all_rows if grad_rows is None else np.asarray(grad_rows)
        self.hvp_rows = self.all_rows if hvp_rows is None else np.asarray(hvp_rows)

    def _batches(self, rows: np.ndarray):
        """Yield (batch, weight) for this rank's part of ``rows``; weight = rows in batch / len(rows)."""
        from torch.utils.data import default_collate

        from dist_unlearn.data.device import to_device

        mine = rows[self.rank :: self.world_size]
        bs = int(self.batch_size or max(1, len(mine)))
        collate = self.collate_fn or default_collate
        for i in range(0, len(mine), bs):
            idx = mine[i : i + bs]
            batch = collate([self.data[int(j)] for j in idx])
            yield to_device(batch, None if self.device.type == "cpu" else self.device), len(idx) / len(rows)

    # ------------------------------------------------------------------ collectives
    def _allreduce(self, t):
        t0 = time.perf_counter()
        self.dist.all_reduce(t)
        self.timer.comm += time.perf_counter() - t0
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
        import torch

        x, y = self.vecs[a], self.vecs[b]
        return self.scalar(float(torch.dot(x.double(), y.double())))

    def dots(self, a: int, bs: list[int]) -> list[float]:
        """Several dot products with one all-reduce (for re-orthogonalisation)."""
        import torch

        x = self.vecs[a].double()
        t = torch.stack([torch.dot(x, self.vecs[b].double()) for b in bs])
        return [float(v) for v in self._allreduce(t)]

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
        import torch

        acc = torch.zeros(self.local_len, dtype=torch.float64, device=self.device)
        for c, x in zip(coeffs, xs, strict=True):
            acc.add_(self.vecs[x].double(), alpha=float(c))
        self.vecs[out] = acc.float()

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

    # ------------------------------------------------------------------ weights
    def _local_weights(self) -> list[Any]:
        if self.stage == 3:
            self._release_z3()
            return [p.ds_tensor for p in self.params]
        return [p.data for p in self.params]

    def _add_to_weights(self, local_vec, alpha: float) -> None:
        """w <- w + alpha * v for this rank's view of the weights (v given as a local shard)."""
        import torch

        if self.stage == 3:
            self._release_z3()
            offs = 0
            for p, size in zip(self.params, self.sizes, strict=True):
                p.ds_tensor.add_(local_vec[offs : offs + size].to(p.ds_tensor.dtype), alpha=alpha)
                offs += size
            return
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
    def _loss_and_local_grad(self, rows: np.ndarray, need_grad: bool = True):
        """(L on ``rows``, this rank's shard of grad L) with every collective done."""
        import torch

        t0 = time.perf_counter()
        comm0 = self.timer.comm
        loss = torch.zeros(1, dtype=torch.float64, device=self.device)
        if self.stage == 3:
            # Forward/backward through the engine: ZeRO-3 gathers parameters and reduce-scatters gradients.
            # DeepSpeed averages gradients over ranks, hence the factor W on the local loss.
            for batch, w in self._batches(rows):
                out = self.loss_fn(self.engine, batch) * (w * self.world_size)
                loss += out.detach().double() / self.world_size
                if need_grad:
                    self.engine.backward(out)
            g = None
            if need_grad:
                from deepspeed.utils import safe_get_local_grad

                pieces = []
                for p, size in zip(self.params, self.sizes, strict=True):
                    gp = safe_get_local_grad(p)
                    pieces.append(
                        gp.reshape(-1).float() if gp is not None else torch.zeros(size, device=self.device)
                    )
                g = torch.cat(pieces) * self.mask
                self.engine.optimizer.zero_grad()
            self._release_z3()
        else:
            acc = [torch.zeros_like(p, dtype=torch.float32) for p in self.params] if need_grad else None
            for batch, w in self._batches(rows):
                out = self.loss_fn(self.module, batch) * w
                loss += out.detach().double()
                if need_grad:
                    gs = torch.autograd.grad(out, self.params, allow_unused=True)
                    for a, gi in zip(acc, gs, strict=True):
                        if gi is not None:
                            a.add_(gi.float())
            g = None
            if need_grad:
                full = torch.cat([a.reshape(-1) for a in acc])
                self._allreduce(full)
                g = self._my_chunk(full)
        self._allreduce(loss)
        self.timer.compute += time.perf_counter() - t0 - (self.timer.comm - comm0)
        return float(loss[0]), g

    def loss(self) -> float:
        import torch

        self.counters["losses"] += 1
        with torch.no_grad() if self.stage != 3 else _nullctx():
            value, _ = self._loss_and_local_grad(self.grad_rows, need_grad=False)
        return value

    def loss_and_gradient(self, out: int) -> float:
        self.counters["gradients"] += 1
        value, g = self._loss_and_local_grad(self.grad_rows)
        self.vecs[out] = g
        return value

    def hvp(self, v: int, out: int) -> None:
        self.counters["hvps"] += 1
        if self.hvp_mode == "fd":
            self.vecs[out] = self._hvp_fd(self.vecs[v])
        else:
            self.vecs[out] = self._hvp_exact(self.vecs[v])

    def _hvp_exact(self, v_local):
        """H v by double backward on the replicated module (ZeRO 0-2), all-reduced, then sharded."""
        import torch

        full_v = self._allgather_flat(v_local)
        t0 = time.perf_counter()
        comm0 = self.timer.comm
        vs, offs = [], 0
        for p in self.params:
            vs.append(full_v[offs : offs + p.numel()].view_as(p).to(p.dtype))
            offs += p.numel()
        acc = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        for batch, w in self._batches(self.hvp_rows):
            out = self.loss_fn(self.module, batch) * w
            gs = torch.autograd.grad(out, self.params, create_graph=True, allow_unused=True)
            pairs = [(g, x) for g, x in zip(gs, vs, strict=True) if g is not None]
            gv = sum((g * x).sum() for g, x in pairs)
            hv = torch.autograd.grad(gv, self.params, allow_unused=True)
            for a, h in zip(acc, hv, strict=True):
                if h is not None:
                    a.add_(h.detach().float())
        full = torch.cat([a.reshape(-1) for a in acc])
        self.timer.compute += time.perf_counter() - t0 - (self.timer.comm - comm0)
        self._allreduce(full)
        return self._my_chunk(full)

    def fd_step(self, v_local) -> float:
        """The central-difference step: eps = eps_mach^(1/3) * max(1, rms(w)) / |v| (fp32 eps_mach).

        Central differences have truncation error O(eps^2 |v|^2) and rounding error O(eps_mach / eps), so the
        perturbation eps |v| is taken ~ eps_mach^(1/3) times the typical weight size. ``fd_eps`` overrides
        the perturbation size eps |v|.
        """
        import torch

        if self.fd_eps is not None:
            return float(self.fd_eps) / max(self.scalar_norm(v_local), 1e-30)
        if self.stage == 3:
            # only the real entries: the partition padding is not a weight (see _layout)
            local = torch.cat([w.detach().reshape(-1) for w in self._local_weights()])
            wsq = float((local.double()[self.mask] ** 2).sum())
        else:
            wsq = sum(float((w.double() ** 2).sum()) for w in self._local_weights())
        if self.stage != 3:
            wsq /= self.world_size  # replicated weights: each rank holds the full norm
        wnorm = math.sqrt(self.scalar(wsq))
        vnorm = self.scalar_norm(v_local)
        if vnorm == 0.0:
            return 0.0
        rel = float(torch.finfo(torch.float32).eps) ** (1.0 / 3.0)
        return rel * max(1.0, wnorm / math.sqrt(self.n)) / vnorm

    def scalar_norm(self, v_local) -> float:
        return math.sqrt(max(self.scalar(float((v_local.double() ** 2).sum())), 0.0))

    def _hvp_fd(self, v_local):
        """H v ~ (grad L(w + eps v) - grad L(w - eps v)) / (2 eps) on fp32 weights, shard by shard."""
        import torch

        eps = self.fd_step(v_local)
        if eps == 0.0:
            return torch.zeros_like(v_local)
        saved = [w.detach().clone() for w in self._local_weights()]
        try:
            self._add_to_weights(v_local, eps)
            _, gp = self._loss_and_local_grad(self.hvp_rows)
            for w, s in zip(self._local_weights(), saved, strict=True):
                w.copy_(s)
            self._add_to_weights(v_local, -eps)
            _, gm = self._loss_and_local_grad(self.hvp_rows)
        finally:
            for w, s in zip(self._local_weights(), saved, strict=True):
                w.copy_(s)
        return (gp - gm) / (2.0 * eps)

    # ------------------------------------------------------------------ checkpoint / output
    def save_shard(self, path: str) -> None:
        """Write this rank's weights to ``path`` ('{rank}' is filled in; temp file + rename)."""
        import torch

        path = path.format(rank=self.rank)
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save([w.detach().cpu() for w in self._local_weights()], tmp)
        os.replace(tmp, path)

    def load_shard(self, path: str) -> None:
        import torch

        saved = torch.load(path.format(rank=self.rank), map_location=self.device)
        for w, s in zip(self._local_weights(), saved, strict=True):
            w.copy_(s)
        self._sync_master()

    def state_dict_numpy(self) -> dict[str, np.ndarray] | None:
        """The consolidated model state dict on rank 0 (numpy), None elsewhere. Collective under ZeRO-3."""
        if self.stage == 3:
            sd = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            sd = self.module.state_dict() if self.rank == 0 else None
        if self.rank != 0 or sd is None:
            return None
        return {k: v.detach().cpu().numpy().copy() for k, v in sd.items()}

    def save_output(self, out_dir: str) -> str | None:
        """Gather the consolidated weights and write the model to ``out_dir`` from rank 0 (atomically)."""
        import cloudpickle
        import torch

        sd = self.state_dict_numpy()
        if self.rank != 0:
            return None
        if self._model_blob is not None:
            model = cloudpickle.loads(self._model_blob)
        else:
            from dist_unlearn.models import load_model

            model = load_model(self._model_spec["model_path"], **self._model_spec.get("model_kwargs", {}))
        model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
        from dist_unlearn.models import save_model

        return str(save_model(model, out_dir))

    def stats(self) -> dict[str, Any]:
        import resource

        return {
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "compute_s": self.timer.compute,
            "allreduce_s": self.timer.comm,
            "counters": dict(self.counters),
            "vectors": len(self.vecs),
        }

    def shutdown(self) -> None:
        """Leave the process group so the next group can rendezvous cleanly."""
        self.vecs.clear()
        self.snaps.clear()
        try:
            if self.dist.is_initialized():
                self.dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort during teardown
            pass


class _nullctx:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
