"""``unlearn(..., workers=N)``: a curvature method run over a Ray worker group, with checkpoints and restarts.

The driver process is the coordinator. It builds a :class:`WorkerGroup` (one DeepSpeed ZeRO rank per actor),
wraps it in a :class:`RayOracle` and runs the method through the same seam as the local engine,
:func:`dist_unlearn.methods.run_curvature_method`. After each outer step every rank writes its weight shard to
the checkpoint folder and the driver keeps the small loop state; when a worker dies the whole group is torn
down, a new one is started from the last checkpoint, and the method continues (at most ``max_restarts``
times). At the end the consolidated weights are gathered once (rank 0) into the caller's model and, when an
output folder is given, saved from rank 0 atomically.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from dist_unlearn.curvature.sample import fixed_hvp_rows
from dist_unlearn.distributed.group import WorkerDiedError, WorkerGroup
from dist_unlearn.distributed.startup import build_group, dataset_of, ensure_ray
from dist_unlearn.errors import ConfigError, DistributedError
from dist_unlearn.stopping import ForgetStopRule

log = logging.getLogger(__name__)

FAULT_ENV = "DIST_UNLEARN_TEST_KILL"
"""Fault injection for tests: ``hvps=K`` kills rank 1 just before the K-th HVP of the first attempt;
``hvps=K,always`` does it on every attempt (restarts are then exhausted)."""


OUTER_STEP_CALLS = (
    "loss",
    "loss_and_gradient",
    "apply_update",
    "snapshot",
    "restore",
    "drop_snapshot",
    "save_shard",
    "load_shard",
    "resample",
    "state_dict_numpy",
    "stats",
    "influence_gradient",
    "retain_loss",
    "membership_losses",
)
"""Worker calls made once per outer step or trial point (loss, gradient, update, snapshots, checkpoints), not
per Lanczos iteration: the first-M search and ARC trials add these, the fused iteration does not."""


def _fault_hook(group: WorkerGroup, attempt: int):
    spec = os.environ.get(FAULT_ENV, "")
    if not spec.startswith("hvps="):
        return None
    parts = spec[len("hvps=") :].split(",")
    k, always = int(parts[0]), "always" in parts[1:]
    if attempt > 0 and not always:
        return None

    def hook(count: int) -> None:
        if count == k:
            group.kill(min(1, group.num_workers - 1))

    return hook


def run_distributed(
    model: Any,
    loss_fn: Any,
    retain: Any,
    forget: Any,
    method: str,
    options: Any,
    *,
    output_dir: str | Path | None = None,
    use_gpu: bool | None = None,
    cpus_per_worker: float = 1,
    model_kwargs: dict | None = None,
):
    """Run the curvature ``method`` on ``options.workers`` Ray workers; ``dist_unlearn.unlearn(workers=N)``.

    Args:
        model: a trained ``nn.Module`` (updated in place with the final weights and returned) or a model
            name/path that each worker loads itself (the driver then loads it once at the end).
        loss_fn: ``loss_fn(model, batch) -> mean loss``; None: ``models.default_loss_fn``.
        retain: the retain set (torch Dataset / DataLoader / datasets.Dataset), sharded row-wise over ranks.
        forget: the forget set, sharded the same way; read for ``objective`` "grad_diff" / "npo",
            ``gradient="influence"`` and the forgetting stop rule (``calibration``; the workers then also
            hold a shard of the calibration data and send per-example losses, :mod:`dist_unlearn.stopping`).
        method: ``cure_newton``, ``cure_newton_stochastic``, ``damped_newton`` or ``pinv_newton``.
        options: :class:`~dist_unlearn.options.UnlearnOptions` (or a dict of them); reads workers,
            zero_stage, deepspeed_config, max_restarts, checkpoint_dir, hvp, batch_size, seed, ...
        output_dir: when given, the final model is saved there (rank 0, atomically).
        use_gpu: one GPU per worker with nccl (None: when CUDA is available).
        cpus_per_worker: CPUs reserved per worker.
        model_kwargs: for a model path, the keyword arguments of ``dist_unlearn.models.load_model`` (e.g.
            ``{"task": "causal_lm"}``) the workers and the driver load it with.

    Returns:
        ``UnlearnResult(model, steps, stats)``; stats add ``coordinator_bytes_per_lanczos_iteration``,
        ``time_breakdown`` (compute / allreduce / coordinator seconds), ``restarts``, ``workers``,
        ``zero_stage``, ``hvp_mode``.

    Raises:
        DistributedError: a worker died more than ``max_restarts`` times (no output is written).
    """
    import torch
    from torch import nn

    from dist_unlearn.methods import OuterLoopState, get_method, run_curvature_method
    from dist_unlearn.options import UnlearnOptions
    from dist_unlearn.result import UnlearnResult

    opts = options if isinstance(options, UnlearnOptions) else UnlearnOptions(**dict(options or {}))
    spec = get_method(method)
    if not spec.curvature:
        raise ConfigError(f"method {method!r} is not a curvature method; it cannot run with workers=N.")
    opts = opts.with_defaults(spec.defaults)
    n = int(opts.workers or 1)
    if use_gpu is None:
        use_gpu = torch.cuda.is_available()
    stochastic = method == "cure_newton_stochastic"
    hvp_rows = None
    if method == "cure_newton":
        try:
            hvp_rows = fixed_hvp_rows(opts.hvp_sample, len(dataset_of(retain)), opts.seed)
        except TypeError:
            hvp_rows = None  # no length: build_group reports it

    initial = (
        {k: p.detach().to("cpu", copy=True) for k, p in model.named_parameters() if p.requires_grad}
        if isinstance(model, nn.Module)
        else None
    )
    started_ray = ensure_ray(int(max(1, n * cpus_per_worker)), n if use_gpu else 0)
    own_ckpt = opts.checkpoint_dir is None
    ckpt = Path(opts.checkpoint_dir or tempfile.mkdtemp(prefix="dist_unlearn_ckpt_"))
    ckpt.mkdir(parents=True, exist_ok=True)
    committed: OuterLoopState | None = None
    restarts = 0
    totals = {"hvps": 0, "gradients": 0, "losses": 0}
    times = {"compute_s": 0.0, "allreduce_s": 0.0, "coordinator_s": 0.0, "setup_s": 0.0, "gather_s": 0.0}
    t_start = time.perf_counter()
    from dist_unlearn.cost import CostCounter

    cost = CostCounter()  # the completed attempt's work (a failed attempt's counters die with its workers)
    try:
        while True:
            group = oracle = None
            try:
                t0 = time.perf_counter()
                group, oracle = build_group(
                    n,
                    model,
                    loss_fn,
                    retain,
                    zero_stage=opts.zero_stage,
                    hvp=opts.hvp,
                    deepspeed_config=opts.deepspeed_config,
                    batch_size=opts.batch_size,
                    grad_batch_size=opts.grad_batch_size if stochastic else None,
                    hvp_batch_size=opts.hvp_batch_size if stochastic else None,
                    seed=opts.seed,
                    collate_fn=opts.collate_fn,
                    use_gpu=use_gpu,
                    cpus_per_worker=cpus_per_worker,
                    model_kwargs=model_kwargs,
                    forget=forget,
                    calibration=opts.calibration,
                    objective=opts.objective,
                    gradient=opts.gradient,
                    forget_weight=opts.forget_weight,
                    beta=opts.beta,
                    hvp_rows=hvp_rows,
                )
                if opts.calibration is not None:
                    oracle.stop_rule = ForgetStopRule(oracle.membership_losses, opts.stop_auc_band)
                if committed is not None:
                    oracle.influence_first = False  # the first step's influence gradient was used already
                    group.execute_all("load_shard", str(ckpt / "weights-rank{rank}.pt"))
                times["setup_s"] += time.perf_counter() - t0
                bytes0, wait0, t_run = group.bytes_received, group.wait_s, time.perf_counter()
                calls0, by_method0 = group.calls, dict(group.calls_by_method)
                oracle.hvp_hook = _fault_hook(group, restarts)
                state = copy.deepcopy(committed) if committed is not None else OuterLoopState(seed=opts.seed)

                def on_step(record: Any, st: OuterLoopState, group: WorkerGroup = group) -> None:
                    nonlocal committed
                    group.execute_all("save_shard", str(ckpt / "weights-rank{rank}.pt.next"))
                    for r in range(group.num_workers):  # commit: all shards of this step are on disk
                        os.replace(ckpt / f"weights-rank{r}.pt.next", ckpt / f"weights-rank{r}.pt")
                    committed = copy.deepcopy(st)
                    tmp = ckpt / "state.pkl.tmp"
                    tmp.write_bytes(pickle.dumps(committed))
                    os.replace(tmp, ckpt / "state.pkl")

                run_curvature_method(method, oracle, opts, state=state, on_step=on_step)
                run_s = time.perf_counter() - t_run
                run_bytes, run_wait = group.bytes_received - bytes0, group.wait_s - wait0
                run_calls = group.calls - calls0
                outer_calls = sum(
                    group.calls_by_method.get(m, 0) - by_method0.get(m, 0) for m in OUTER_STEP_CALLS
                )
                run_hvps = max(1, oracle.counters["hvps"])
                t0 = time.perf_counter()
                final_loss = None
                if stochastic:
                    oracle.resample(None)
                    final_loss = oracle.loss()
                elif opts.objective != "retain":  # the loop's final loss is the objective's
                    final_loss = oracle.retain_loss()
                saved = None
                if output_dir is not None:  # one gather of the consolidated weights: saved and returned
                    model_ref = [group.model_ref] if group.model_ref is not None else None
                    saved, sd = group.execute_all("save_output", str(output_dir), model_ref, True)[0]
                else:
                    sd = group.execute_all("state_dict_numpy")[0]
                worker_stats = group.execute_all("stats")
                for w in worker_stats:  # each rank counted its own shard's examples
                    cost.merge(w["cost"])
                times["gather_s"] += time.perf_counter() - t0
                break
            except WorkerDiedError as e:
                if restarts >= opts.max_restarts:
                    raise DistributedError(
                        f"a worker failed and max_restarts={opts.max_restarts} restarts are used up; no "
                        f"output was written. Last error: {e}"
                    ) from e
                restarts += 1
                log.warning(
                    "worker failure (%s); restart %d/%d from the last checkpoint",
                    e,
                    restarts,
                    opts.max_restarts,
                )
            finally:
                if group is not None:
                    group.shutdown()
                if oracle is not None:
                    for k in ("hvps", "gradients", "losses"):
                        totals[k] += oracle.counters.get(k, 0)
    finally:
        if own_ckpt:
            shutil.rmtree(ckpt, ignore_errors=True)
        if started_ray:
            import ray

            ray.shutdown()

    # The final weights go into the caller's model (a path: loaded once here).
    if isinstance(model, nn.Module):
        out_model = model
    else:
        from dist_unlearn.models import load_model

        out_model = load_model(str(model), **(model_kwargs or {}))
    with torch.no_grad():
        own = out_model.state_dict()
        for k, v in sd.items():
            if k in own:
                own[k].copy_(torch.from_numpy(v.copy()).to(own[k].dtype))

    steps = list(state.history)
    update_norm = None
    if initial is not None:
        final = dict(out_model.named_parameters())
        sq = sum(float((final[k].detach().double() - v.double()).pow(2).sum()) for k, v in initial.items())
        update_norm = sq**0.5
    stats: dict[str, Any] = {
        "method": method,
        "wall_time": time.perf_counter() - t_start,
        "workers": n,
        "zero_stage": group.spec["zero_stage"],
        "hvp_mode": group.spec["hvp"],
        "restarts": restarts,
        "total_hvps": totals["hvps"],
        "total_gradients": totals["gradients"],
        "total_losses": totals["losses"],
        "final_M": state.M,
        "stop_reason": state.stop_reason,
        "final_loss": final_loss if final_loss is not None else state.final_loss,
        "objective": opts.objective,
        **({"final_objective": state.final_loss} if opts.objective != "retain" else {}),
        **({"stop_checks": list(state.stop_checks)} if state.stop_checks else {}),
        **(
            {"stop_rule": ForgetStopRule(lambda: None, opts.stop_auc_band).describe()}
            if opts.calibration is not None
            else {}
        ),
        "final_grad_norm": state.final_grad_norm,
        "update_norm": update_norm,
        "peak_memory_mb": max(w["peak_rss_mb"] for w in worker_stats),
        "peak_memory_source": "peak RSS of the worker processes (max over ranks)",
        "num_steps": len(steps),
        "accepted_steps": sum(1 for s in steps if s.accepted),
        "coordinator_bytes_total": run_bytes,
        "coordinator_bytes_per_lanczos_iteration": run_bytes / run_hvps,
        "cost": cost.as_dict(),
        "time_breakdown": {
            "compute_s": max(w["compute_s"] for w in worker_stats),
            "allreduce_s": max(w["allreduce_s"] for w in worker_stats),
            "coordinator_s": max(run_s - run_wait, 0.0),
            "coordinator_share": max(run_s - run_wait, 0.0) / max(run_s, 1e-12),
            "driver_round_trips": run_calls,
            # the solve's driver calls (all but the outer step's OUTER_STEP_CALLS) per Lanczos iteration
            # (one HVP = one iteration), and every driver call of the run per HVP
            "driver_round_trips_per_lanczos_iteration": (run_calls - outer_calls) / run_hvps,
            "driver_round_trips_per_hvp_whole_run": run_calls / run_hvps,
            "outer_step_round_trips": outer_calls,
            "round_trips_by_call": {
                m: c - by_method0.get(m, 0)
                for m, c in group.calls_by_method.items()
                if c > by_method0.get(m, 0)
            },
            "worker_wait_s": run_wait,
            "setup_s": times["setup_s"],
            "gather_s": times["gather_s"],
        },
        "output_dir": saved,
        "options": opts.public_dict() if hasattr(opts, "public_dict") else {},
    }
    return UnlearnResult(model=out_model, steps=steps, stats=stats)
