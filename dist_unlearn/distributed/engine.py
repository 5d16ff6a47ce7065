"""``unlearn(..., workers=N)``: a curvature method run over a Ray worker group, with checkpoints and restarts.

The driver process is the coordinator. :func:`run_distributed` is the whole run, in steps:

1. :func:`prepare` the run: options with the method's defaults, the HVP sample's rows, the initial weights
   (for the update norm), the checkpoint folder, Ray.
2. :func:`run_attempts`: each attempt :func:`start_group` (a :class:`WorkerGroup`, one DeepSpeed ZeRO rank
   per actor, wrapped in a :class:`RayOracle`; from the last checkpoint after a failure), then
   :func:`run_method` through the same seam as the local engine,
   :func:`dist_unlearn.methods.run_curvature_method`, writing every rank's weight shard to the checkpoint
   folder after each outer step, then :func:`gather` the final weights once (rank 0), saved from rank 0
   atomically when an output folder is given. When a worker dies the whole group is torn down and a new one
   continues from the last checkpoint (at most ``max_restarts`` times).
3. :func:`load_final_weights` into the caller's model (or the model loaded once from its path), and
   :func:`engine_stats`: cost, time breakdown, round trips.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from dist_unlearn.curvature.sample import draw_retain_sample, resolve_gradient
from dist_unlearn.distributed.group import WorkerDiedError, WorkerGroup
from dist_unlearn.distributed.run_state import OUTER_STEP_CALLS, EngineRun, engine_stats
from dist_unlearn.distributed.startup import build_group, dataset_of, ensure_ray
from dist_unlearn.errors import ConfigError, DistributedError, NumericalError
from dist_unlearn.stop_setup import rule_for

log = logging.getLogger(__name__)

FAULT_ENV = "DIST_UNLEARN_TEST_KILL"
"""Fault injection for tests: ``hvps=K`` kills rank 1 just before the K-th HVP of the first attempt;
``hvps=K,always`` does it on every attempt (restarts are then exhausted)."""


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
    from dist_unlearn.result import UnlearnResult

    run = prepare(model, retain, forget, method, options, use_gpu, cpus_per_worker, model_kwargs)
    try:
        run_attempts(run, model, loss_fn, retain, forget, output_dir)
    finally:
        if run.own_ckpt:
            shutil.rmtree(run.ckpt, ignore_errors=True)
        if run.started_ray:
            import ray

            ray.shutdown()
    out_model = load_final_weights(run, model)
    return UnlearnResult(model=out_model, steps=list(run.state.history), stats=engine_stats(run, out_model))


def prepare(
    model: Any,
    retain: Any,
    forget: Any,
    method: str,
    options: Any,
    use_gpu: bool | None,
    cpus_per_worker: float,
    model_kwargs: dict | None,
) -> EngineRun:
    """Step 1: options with defaults (the gradient kind resolved as in-process), the HVP sample, the initial
    weights, the checkpoint folder, Ray."""
    import torch
    from torch import nn

    from dist_unlearn.cost import CostCounter
    from dist_unlearn.methods import get_method
    from dist_unlearn.options import UnlearnOptions

    opts = options if isinstance(options, UnlearnOptions) else UnlearnOptions(**dict(options or {}))
    spec = get_method(method)
    if not spec.curvature:
        raise ConfigError(f"method {method!r} is not a curvature method; it cannot run with workers=N.")
    opts = opts.with_defaults(spec.defaults).with_objective(spec.curvature)
    n = int(opts.workers or 1)
    if use_gpu is None:
        use_gpu = torch.cuda.is_available()
    hvp_rows = None
    try:
        n_rows = len(dataset_of(retain))
    except TypeError:
        n_rows = None  # no length: build_group reports it
    if n_rows is not None:
        sample = opts.retain_sample if method == "cure_newton" else "all"
        opts.gradient = resolve_gradient(opts.gradient, opts.objective, sample, n_rows, forget is not None)
        if method == "cure_newton":  # the method fixes both samples at its start; these are its HVP rows
            hvp_rows = draw_retain_sample(
                opts.retain_sample, opts.hvp_sample, n_rows, opts.seed, opts.objective
            ).hvp_rows
    initial = (
        {k: p.detach().to("cpu", copy=True) for k, p in model.named_parameters() if p.requires_grad}
        if isinstance(model, nn.Module)
        else None
    )
    run = EngineRun(
        method=method,
        opts=opts,
        workers=n,
        use_gpu=use_gpu,
        cpus_per_worker=cpus_per_worker,
        model_kwargs=model_kwargs,
        hvp_rows=hvp_rows,
        initial=initial,
        ckpt=Path(opts.checkpoint_dir or tempfile.mkdtemp(prefix="dist_unlearn_ckpt_")),
        own_ckpt=opts.checkpoint_dir is None,
        cost=CostCounter(),  # the completed attempt's work (a failed attempt's counters die with its workers)
    )
    run.ckpt.mkdir(parents=True, exist_ok=True)
    run.started_ray = ensure_ray(int(max(1, n * cpus_per_worker)), n if use_gpu else 0)
    return run


def run_attempts(run: EngineRun, model: Any, loss_fn: Any, retain: Any, forget: Any, output_dir: Any) -> None:
    """Step 2: attempts until one finishes; a dead worker restarts the group from the last checkpoint."""
    while True:
        group = oracle = None
        try:
            group, oracle = start_group(run, model, loss_fn, retain, forget)
            run_method(run, group, oracle)
            gather(run, group, oracle, output_dir)
            return
        except WorkerDiedError as e:
            opts = run.opts
            if run.restarts >= opts.max_restarts:
                raise DistributedError(
                    f"a worker failed and max_restarts={opts.max_restarts} restarts are used up; no "
                    f"output was written. Last error: {e}"
                ) from e
            run.restarts += 1
            log.warning(
                "worker failure (%s); restart %d/%d from the last checkpoint",
                e,
                run.restarts,
                opts.max_restarts,
            )
        finally:
            if group is not None:
                group.shutdown()
            if oracle is not None:
                for k in ("hvps", "gradients", "losses"):
                    run.totals[k] += oracle.counters.get(k, 0)


def start_group(
    run: EngineRun, model: Any, loss_fn: Any, retain: Any, forget: Any
) -> tuple[WorkerGroup, Any]:
    """One attempt's worker group and oracle, from the last checkpoint when there is one."""
    opts = run.opts
    t0 = time.perf_counter()
    group, oracle = build_group(
        run.workers,
        model,
        loss_fn,
        retain,
        zero_stage=opts.zero_stage,
        hvp=opts.hvp,
        deepspeed_config=opts.deepspeed_config,
        batch_size=opts.batch_size,
        grad_batch_size=opts.grad_batch_size if run.stochastic else None,
        hvp_batch_size=opts.hvp_batch_size if run.stochastic else None,
        seed=opts.seed,
        collate_fn=opts.collate_fn,
        use_gpu=run.use_gpu,
        cpus_per_worker=run.cpus_per_worker,
        model_kwargs=run.model_kwargs,
        forget=forget,
        calibration=opts.calibration,
        objective=opts.objective,
        gradient=opts.gradient,
        forget_weight=opts.forget_weight,
        beta=opts.beta,
        hvp_rows=run.hvp_rows,
    )
    bins = push = None
    if opts.objective == "match_unseen":  # the driver sees every row of a subject: it derives the bins
        from dist_unlearn.targets import ForgetTargets

        bins = ForgetTargets(opts.forget_subjects, opts.bin_span)

        def push(forget_losses: Any, calibration_losses: Any) -> None:
            bins.update(forget_losses, calibration_losses)
            oracle.set_forget_bins(bins.table.numpy())

    if opts.calibration is not None:
        oracle.stop_rule = rule_for(oracle.membership_losses, opts, bins, push)
        if opts.retain_tolerance is not None:
            oracle.stop_rule.guard = retain_guard(run, oracle, retain)
    if run.committed is not None:
        oracle.influence_first = False  # the first step's influence gradient was used already
        group.execute_all("load_shard", str(run.ckpt / "weights-rank{rank}.pt"))
        if run.anchor_saved:  # the influence anchor c and its value at the checkpoint
            from dist_unlearn.curvature.objective import LinearAnchor

            c = oracle.space.new_handle()
            group.execute_all("load_vector", str(run.ckpt / "anchor-rank{rank}.pt"), c.id)
            oracle.anchor = LinearAnchor(oracle.space, c)
            oracle.anchor.value = run.anchor_value
        if push is not None:  # the new ranks' bins: from the restored weights (the last kept point)
            push(*oracle.membership_losses())
    run.times["setup_s"] += time.perf_counter() - t0
    return group, oracle


def retain_guard(run: EngineRun, oracle: Any, retain: Any) -> Any:
    """The stop rule's retain guard over the workers' losses of a fixed sample of retained rows; one guard
    for the whole run (its baseline, the weights as given, outlives a restart), bound to this attempt."""
    from dist_unlearn.data.split import sample_rows
    from dist_unlearn.stop_setup import GUARD_SAMPLE, RetainGuard

    rows = sample_rows(len(dataset_of(retain)), GUARD_SAMPLE, run.opts.seed)
    if run.guard is None:
        run.guard = RetainGuard(lambda: None, run.opts.retain_tolerance, run.opts.unseen_tolerance)
    run.guard.losses = lambda: oracle.retain_sample_losses(rows)
    return run.guard


def run_method(run: EngineRun, group: WorkerGroup, oracle: Any) -> None:
    """The method through the common seam, a checkpoint after every outer step; counts round trips."""
    from dist_unlearn.methods import OuterLoopState, run_curvature_method

    bytes0, wait0, t_run = group.bytes_received, group.wait_s, time.perf_counter()
    calls0, by_method0 = group.calls, dict(group.calls_by_method)
    posted0 = (group.posted, dict(group.posted_by_method))
    oracle.hvp_hook = _fault_hook(group, run.restarts)
    state = copy.deepcopy(run.committed) if run.committed is not None else OuterLoopState(seed=run.opts.seed)

    def on_step(record: Any, st: OuterLoopState) -> None:
        checkpoint(run, group, oracle, st)

    run_curvature_method(run.method, oracle, run.opts, state=state, on_step=on_step)
    run.state = state
    run.times["run_s"] = time.perf_counter() - t_run
    run.times["wait_s"] = group.wait_s - wait0
    outer_calls = sum(group.calls_by_method.get(m, 0) - by_method0.get(m, 0) for m in OUTER_STEP_CALLS)
    run.measured = {
        "bytes": group.bytes_received - bytes0,
        "calls": group.calls - calls0,
        "outer_calls": outer_calls,
        "hvps": max(1, oracle.counters["hvps"]),
        "by_call": _diff(group.calls_by_method, by_method0),
        "calls0": calls0,
        "by_method0": by_method0,
        "posted0": posted0,
    }


def _diff(now: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {m: c - before.get(m, 0) for m, c in now.items() if c > before.get(m, 0)}


def checkpoint(run: EngineRun, group: WorkerGroup, oracle: Any, state: Any) -> None:
    """Every rank writes its weight shard (posted: no round trip of its own), then, once every rank has
    finished writing (seen at the driver's next call to the workers), the shards and the loop state of this
    step are committed together, with the influence anchor (its vector once, its running value every time).
    A worker lost before that leaves the previous step's checkpoint in force. A kept curvature basis is not
    saved: a restarted run rebuilds it (:mod:`dist_unlearn.methods.kept_curvature`)."""
    snapshot = copy.deepcopy(state)
    anchor = getattr(oracle, "anchor", None)
    if anchor is not None and not run.anchor_saved:
        group.execute_all("save_vector", anchor.c.id, str(run.ckpt / "anchor-rank{rank}.pt"))
        run.anchor_saved = True
    anchor_value = None if anchor is None else anchor.value

    def commit() -> None:
        for r in range(group.num_workers):  # all shards of this step are on disk
            os.replace(run.ckpt / f"weights-rank{r}.pt.next", run.ckpt / f"weights-rank{r}.pt")
        run.committed = snapshot
        run.anchor_value = anchor_value
        tmp = run.ckpt / "state.pkl.tmp"
        tmp.write_bytes(pickle.dumps(snapshot))
        os.replace(tmp, run.ckpt / "state.pkl")

    group.post_all("save_shard", str(run.ckpt / "weights-rank{rank}.pt.next"), on_done=commit)


def gather(run: EngineRun, group: WorkerGroup, oracle: Any, output_dir: Any) -> None:
    """The final retain loss, one gather of the final weights (saved when asked) and the workers' stats, in
    one call to the workers."""
    t0 = time.perf_counter()
    final = "loss" if run.stochastic else ("retain" if run.opts.objective != "retain" else None)
    model_ref = [group.model_ref] if group.model_ref is not None else None
    out = str(output_dir) if output_dir is not None else None
    replies = group.execute_all("finish", out, model_ref, final)
    if final is not None:
        run.final_loss = float(replies[0]["loss"])
        if not math.isfinite(run.final_loss):
            raise NumericalError(f"the final retain loss is {run.final_loss} on the workers.")
    if output_dir is not None:  # one gather of the consolidated weights: saved and returned
        run.saved, run.final_state_dict = replies[0]["output"]
    else:
        run.final_state_dict = replies[0]["output"]
    run.worker_stats = [r["stats"] for r in replies]
    for w in run.worker_stats:  # each rank counted its own shard's examples
        run.cost.merge(w["cost"])
    run.spec = dict(group.spec)
    run.times["gather_s"] += time.perf_counter() - t0
    m = run.measured  # the whole run, final gather included: every call the driver waited for
    posted0, posted_by0 = m["posted0"]
    m["whole_run_calls"] = group.calls - m["calls0"]
    m["whole_run_by_call"] = _diff(group.calls_by_method, m["by_method0"])
    m["posted"] = group.posted - posted0
    m["posted_by_call"] = _diff(group.posted_by_method, posted_by0)


def load_final_weights(run: EngineRun, model: Any) -> Any:
    """Step 3: the final weights into the caller's model (a path: loaded once here)."""
    import torch
    from torch import nn

    if isinstance(model, nn.Module):
        out_model = model
    else:
        from dist_unlearn.models import load_model

        out_model = load_model(str(model), **(run.model_kwargs or {}))
    with torch.no_grad():
        own = out_model.state_dict()
        for k, v in run.final_state_dict.items():
            if k in own:
                own[k].copy_(torch.from_numpy(v.copy()).to(own[k].dtype))
    return out_model
