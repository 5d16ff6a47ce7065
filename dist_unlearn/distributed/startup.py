"""Starting the engine: connect to (or start) Ray, and build a worker group with its oracle.

:func:`build_group` validates the retain set, ships the model (live module cloudpickled, or a path each
worker loads itself) and the data parts, and returns the group with its :class:`RayOracle`; the bench and
the GPU script use it directly, :func:`dist_unlearn.distributed.engine.run_distributed` through restarts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dist_unlearn.distributed.dsconfig import hvp_mode, make_ds_config
from dist_unlearn.distributed.group import WorkerGroup
from dist_unlearn.distributed.oracle import RayOracle
from dist_unlearn.errors import DataError, ModelError


def ensure_ray(num_cpus: int, num_gpus: int = 0) -> bool:
    """Connect to a running Ray (RAY_ADDRESS or already initialised) or start a local one.

    Returns:
        True when this call started Ray (the caller shuts it down).
    """
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        return True
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False)
    return True


def worker_spec(
    *,
    zero_stage: int,
    hvp: str,
    deepspeed_config: dict | str | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    collate_fn: Any = None,
    model_path: str | None = None,
    model_kwargs: dict | None = None,
    fd_eps: float | None = None,
    objective: str = "retain",
    gradient: str = "full",
    forget_weight: float = 1.0,
    beta: float = 0.1,
) -> dict[str, Any]:
    """What :meth:`DistWorker.setup <dist_unlearn.distributed.worker.DistWorker.setup>` reads besides the
    model, loss and data blobs: the engine's groups and the GPU benchmark's single rank build it here, so a
    key the workers start reading reaches both. ``model_path`` None: the model comes as a pickled module."""
    import cloudpickle

    spec = {
        "zero_stage": zero_stage,
        "hvp": hvp_mode(hvp, zero_stage),
        "ds_config": make_ds_config(zero_stage, deepspeed_config),
        "batch_size": batch_size,
        "seed": seed,
        "collate_fn": cloudpickle.dumps(collate_fn) if collate_fn is not None else None,
        "model_path": model_path,
        # by value (a factory defined in the caller's script must reach the workers): decoded in setup
        "model_kwargs": cloudpickle.dumps(dict(model_kwargs or {})),
        "fd_eps": fd_eps,
        "objective": objective,
        "gradient": gradient,
        "forget_weight": float(forget_weight),
        "beta": float(beta),
    }
    spec["zero_stage"] = spec["ds_config"]["zero_optimization"]["stage"]
    return spec


def build_group(
    num_workers: int,
    model: Any,
    loss_fn: Any,
    retain: Any,
    *,
    zero_stage: int = 0,
    hvp: str = "exact",
    deepspeed_config: dict | str | None = None,
    batch_size: int | None = None,
    grad_batch_size: int | None = None,
    hvp_batch_size: int | None = None,
    seed: int = 0,
    collate_fn: Any = None,
    model_kwargs: dict | None = None,
    use_gpu: bool = False,
    cpus_per_worker: float = 1,
    fd_eps: float | None = None,
    forget: Any = None,
    calibration: Any = None,
    objective: str = "retain",
    gradient: str = "full",
    forget_weight: float = 1.0,
    beta: float = 0.1,
    hvp_rows: list[int] | None = None,
) -> tuple[WorkerGroup, RayOracle]:
    """Start ``num_workers`` ranks holding ``model`` and their shard of ``retain``; return (group, oracle).

    Ray must be initialised (see :func:`ensure_ray`). ``model`` is a live ``nn.Module`` (cloudpickled to the
    workers) or a model name/path each worker loads itself with ``dist_unlearn.models.load_model``.
    The caller owns the group: call ``group.shutdown()``.

    ``forget`` / ``calibration`` are sharded like ``retain``; ``objective``, ``gradient``, ``forget_weight``
    and ``beta`` choose the loss the workers differentiate (as in
    :func:`dist_unlearn.curvature.objective.build_oracle`). ``hvp_rows``: a fixed HVP sample of retain rows
    (cure_newton's ``hvp_sample``; None = all).
    """
    import cloudpickle
    from torch import nn
    from torch.utils.data import DataLoader

    if retain is None:
        raise DataError("the distributed engine needs the retain set: pass retain=<Dataset or DataLoader>.")
    if isinstance(retain, DataLoader):
        collate_fn = collate_fn or retain.collate_fn
        batch_size = batch_size or retain.batch_size  # the in-process oracle's micro-batch too
        retain = retain.dataset
    try:
        num_rows = len(retain)
    except TypeError as e:
        raise DataError(f"the retain set ({type(retain).__name__}) must be map-style (have a length).") from e
    if num_rows < num_workers:
        raise DataError(f"the retain set has {num_rows} rows, fewer than workers={num_workers}.")
    if isinstance(model, nn.Module):
        model_blob, model_path = cloudpickle.dumps(model), None
    elif isinstance(model, str | Path):
        model_blob, model_path = None, str(model)
    else:
        raise ModelError(f"model is a {type(model).__name__}; give an nn.Module or a model name/path.")
    spec = worker_spec(
        zero_stage=zero_stage, hvp=hvp, deepspeed_config=deepspeed_config, batch_size=batch_size, seed=seed,
        collate_fn=collate_fn, model_path=model_path, model_kwargs=model_kwargs, fd_eps=fd_eps,
        objective=objective, gradient=gradient, forget_weight=forget_weight, beta=beta,
    )  # fmt: skip
    loss_blob = cloudpickle.dumps(loss_fn) if loss_fn is not None else None
    parts = {"retain": retain, "forget": dataset_of(forget), "calibration": dataset_of(calibration)}
    group = WorkerGroup(num_workers, use_gpu=use_gpu, cpus_per_worker=cpus_per_worker)
    try:
        group.setup_info = group.setup(spec, model_blob, loss_blob, cloudpickle.dumps(parts))
        if hvp_rows is not None:
            group.execute_all("resample", None, list(hvp_rows))
    except BaseException:
        group.shutdown()
        raise
    group.spec = spec
    oracle = RayOracle(
        group,
        num_rows=num_rows,
        grad_batch_size=grad_batch_size,
        hvp_batch_size=hvp_batch_size,
        influence_first=objective == "retain" and gradient == "influence",
    )
    return group, oracle


def dataset_of(data: Any) -> Any:
    """The dataset behind a DataLoader (anything else as it is)."""
    from torch.utils.data import DataLoader

    return data.dataset if isinstance(data, DataLoader) else data
