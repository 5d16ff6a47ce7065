"""One Ray actor = one torch.distributed rank with a DeepSpeed engine and a shard of the retain data.

Vectors live here, in :attr:`DistWorker.vecs`, keyed by the integer handle id the driver chose. A vector is
this rank's *shard* of a parameter-space vector (one flat float32 tensor):

- ZeRO 0/1/2: the flattened trainable parameters are cut into ``W`` equal chunks of ``c = ceil(n / W)``
  entries (the last one zero-padded); rank r owns entries ``[r c, (r + 1) c)``.
- ZeRO 3: the concatenation of this rank's ``p.ds_tensor`` partitions, so vector shards are partitioned
  exactly like the parameter shards (padding entries are kept at zero by a mask).

Dot products are a local float64 dot plus an all-reduce, so only scalars ever leave a worker.

The actor is assembled from one module per seam: engine setup, data shard, checkpoints (here); the vector
store (:mod:`~dist_unlearn.distributed.vectors`); weights, loss, gradient and the HVP kinds
(:mod:`~dist_unlearn.distributed.hvp`); the fused Lanczos iteration (:mod:`~dist_unlearn.distributed.fused`);
the forget / calibration shards and the forgetting objectives (:mod:`~dist_unlearn.distributed.objective`).
"""

from __future__ import annotations

import math
import os
from datetime import timedelta
from typing import Any

import numpy as np

from dist_unlearn.distributed.fused import FusedLanczos
from dist_unlearn.distributed.hvp import GradHVP
from dist_unlearn.distributed.objective import ObjectiveParts
from dist_unlearn.distributed.sums import Float64Sums
from dist_unlearn.distributed.vectors import VectorStore


class _Timer:
    def __init__(self) -> None:
        self.compute = 0.0
        self.comm = 0.0


class DistWorker(VectorStore, GradHVP, Float64Sums, FusedLanczos, ObjectiveParts):
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
        from dist_unlearn.cost import CostCounter

        self.cost = CostCounter()  # this rank's examples per kind of work (the driver sums the ranks')
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
        """Rendezvous, build the model and the DeepSpeed engine, and shard the data.

        ``data_blob`` is the pickled retain set, or a dict ``{"retain", "forget", "calibration"}`` (the last
        two may be None); ``spec`` carries the objective (``objective``, ``gradient``, ``forget_weight``,
        ``beta``). NPO reference losses are computed here, at the weights as given.

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

        spec = {**spec, "model_kwargs": cloudpickle.loads(spec["model_kwargs"])}

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

        from dist_unlearn.distributed.loading import build_model

        model = build_model(model_blob, spec)  # ZeRO-3 from a path: partitioned from the start
        # every parameter already a ZeRO-3 partition (built under deepspeed.zero.Init)?
        self.partitioned_at_load = all(hasattr(p, "ds_id") for p in model.parameters())
        # the pickled model is not kept on the workers: save_output gets it again from the object store
        self._model_spec = spec
        if loss_blob is not None:
            self.loss_fn = cloudpickle.loads(loss_blob)
        else:
            from dist_unlearn.models import default_loss_fn

            self.loss_fn = default_loss_fn(model)
        model.eval()  # dropout off: the oracle must be deterministic
        if self.hvp_mode == "exact":  # double backward through attention, as the in-process oracle does
            from dist_unlearn.curvature.attention import ensure_double_backward_attention

            ensure_double_backward_attention(model)
        model.to(self.device)
        self.param_names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            from dist_unlearn.errors import ModelError

            raise ModelError(
                "the model has no trainable parameters (requires_grad=True); nothing to unlearn."
            )
        optimizer = torch.optim.SGD(params, lr=0.0)  # never stepped: ZeRO needs one to partition grads
        from dist_unlearn.distributed.dsconfig import with_zero3_buffers

        numel = sum(int(getattr(p, "ds_numel", p.numel())) for p in params)  # partitioned: ds_numel
        ds_config = with_zero3_buffers(spec["ds_config"], numel)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        self.engine = engine
        self.module = engine.module
        self.module.eval()
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self._layout()
        if self.stage == 3:
            self._install_z3_hooks()  # float64 gradient sums (distributed.sums)

        data = cloudpickle.loads(data_blob)
        parts = data if isinstance(data, dict) else {"retain": data}
        self._set_data(parts["retain"])
        self._set_parts(parts.get("forget"), parts.get("calibration"), spec)
        self._prepare_objective()
        return {
            "num_params": self.n,
            "local_len": self.local_len,
            "local_rows": self._mine(self.all_rows),
            "rows": self.num_rows,
            "partitioned_at_load": self.partitioned_at_load,
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

    def resample(self, grad_rows: list[int] | None, hvp_rows: list[int] | None) -> None:
        """Fix the gradient / HVP samples (global row indices, identical on every rank)."""
        self.grad_rows = self.all_rows if grad_rows is None else np.asarray(grad_rows)
        self.hvp_rows = self.all_rows if hvp_rows is None else np.asarray(hvp_rows)

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

    def save_output(
        self, out_dir: str, model_ref: list | None = None, return_state: bool = False
    ) -> str | tuple[str, dict[str, np.ndarray]] | None:
        """Gather the consolidated weights and write the model to ``out_dir`` from rank 0 (atomically).

        ``model_ref``: ``[ObjectRef]`` of the pickled model the group was set up with (a list, so Ray does not
        resolve it on every rank: only rank 0 fetches it); None for a model loaded from a path.
        ``return_state``: rank 0 returns ``(path, state dict)`` so the caller needs no second gather.
        """
        import cloudpickle
        import torch

        sd = self.state_dict_numpy()
        if self.rank != 0:
            return None
        if model_ref:
            import ray

            model = cloudpickle.loads(ray.get(model_ref[0]))
        else:
            from dist_unlearn.models import load_model

            model = load_model(self._model_spec["model_path"], **self._model_spec.get("model_kwargs", {}))
        model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
        from dist_unlearn.models import save_model

        path = str(save_model(model, out_dir))
        return (path, sd) if return_state else path

    def finish(self, out_dir: str | None, model_ref: list | None, final_loss: str | None) -> dict[str, Any]:
        """The end of a run in one call: the final loss (``final_loss`` "retain": L_r alone; "loss": L on all
        rows after the stochastic variant's samples), the consolidated weights (rank 0: the state dict, or
        (path, state dict) when ``out_dir`` is given, see :meth:`save_output`), and this rank's stats."""
        out: dict[str, Any] = {}
        if final_loss == "retain":
            out["loss"] = self.retain_loss()
        elif final_loss == "loss":
            self.resample(None, None)
            out["loss"] = self.loss()
        if out_dir is not None:
            out["output"] = self.save_output(out_dir, model_ref, return_state=True)
        else:
            out["output"] = self.state_dict_numpy()
        out["stats"] = self.stats()
        return out

    def stats(self) -> dict[str, Any]:
        import resource

        return {
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "compute_s": self.timer.compute,
            "allreduce_s": self.timer.comm,
            "counters": dict(self.counters),
            "cost": self.cost.as_dict(),
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
