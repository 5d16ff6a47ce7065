"""The state of one distributed run across its attempts, and the statistics it reports.

:class:`EngineRun` is what the steps of :func:`dist_unlearn.distributed.engine.run_distributed` share;
:func:`engine_stats` turns the finished run into ``UnlearnResult.stats`` (the loop's values, cost, memory,
time breakdown, and the driver's round trips to the workers).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dist_unlearn.stop_setup import rule_for

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
    "set_forget_bins",
    "retain_sample_losses",
    "save_vector",
    "load_vector",
    "try_step",
    "trial_losses",
    "finish",
)
"""Worker calls made once per outer step or trial point (loss, gradient, update, snapshots, checkpoints), not
per Lanczos iteration: the first-M search and ARC trials add these, the fused iteration does not."""


@dataclass
class EngineRun:
    """One distributed run across its attempts (the state :func:`run_distributed`'s steps share).

    Attributes:
        method / opts: the method and its options (defaults filled in); workers: the group size.
        use_gpu / cpus_per_worker / model_kwargs: how each worker starts and loads the model.
        hvp_rows: cure_newton's fixed HVP sample (row ids), the same rows as in-process for the seed.
        anchor_value / anchor_saved: the influence anchor's running value at the last checkpoint, and
            whether its vector c is on disk (the ranks' ``anchor-rank{r}.pt``) for a restarted group.
        initial: the caller's model's trainable weights before the run (None for a model path).
        ckpt / own_ckpt: the checkpoint folder and whether the run made it (and removes it).
        committed: the loop state of the last checkpointed outer step; restarts: attempts restarted.
        totals / times / cost: counters summed over attempts (cost: the finishing attempt's workers).
        state / final_state_dict / saved / worker_stats / final_loss / spec: the finishing attempt's.
        measured: round trips and bytes of the finishing attempt's method run.
        guard: the stop rule's retain guard (kept across attempts: its baseline is the weights as given).
    """

    method: str
    opts: Any
    workers: int
    use_gpu: bool
    cpus_per_worker: float
    model_kwargs: dict | None
    hvp_rows: list[int] | None
    initial: dict[str, Any] | None
    ckpt: Path
    own_ckpt: bool
    started_ray: bool = False
    committed: Any = None
    restarts: int = 0
    totals: dict[str, int] = field(default_factory=lambda: {"hvps": 0, "gradients": 0, "losses": 0})
    times: dict[str, float] = field(
        default_factory=lambda: {"setup_s": 0.0, "gather_s": 0.0, "run_s": 0.0, "wait_s": 0.0}
    )
    cost: Any = None
    t_start: float = field(default_factory=time.perf_counter)
    state: Any = None
    final_state_dict: dict[str, Any] | None = None
    saved: Any = None
    worker_stats: list[dict[str, Any]] = field(default_factory=list)
    final_loss: float | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)
    guard: Any = None
    anchor_value: float | None = None
    anchor_saved: bool = False

    @property
    def stochastic(self) -> bool:
        return self.method == "cure_newton_stochastic"


def forgetting_of(checks: list[dict[str, Any]]) -> dict[str, Any]:
    """``stats["forgetting"]`` of an engine run: its stop rule's last check (or why there is none)."""
    from dist_unlearn.forgetting import from_stop_checks

    if checks:
        return from_stop_checks(checks)
    return {
        "status": "not_measured",
        "message": "no calibration data (rows the model never saw) was given, so nothing judged the forget "
        "rows; pass calibration= (the job: a holdout) to judge and stop per subject.",
    }


def engine_stats(run: EngineRun, out_model: Any) -> dict[str, Any]:
    """The run's statistics: the loop's, cost, memory, time breakdown and driver round trips."""
    opts, state, m, ws = run.opts, run.state, run.measured, run.worker_stats
    steps = state.history
    update_norm = None
    if run.initial is not None:
        final = dict(out_model.named_parameters())
        sq = sum(
            float((final[k].detach().double() - v.double()).pow(2).sum()) for k, v in run.initial.items()
        )
        update_norm = sq**0.5
    run_s, wait_s = run.times["run_s"], run.times["wait_s"]
    coordinator_s = max(run_s - wait_s, 0.0)
    return {
        "method": run.method,
        "wall_time": time.perf_counter() - run.t_start,
        "workers": run.workers,
        "zero_stage": run.spec["zero_stage"],
        "hvp_mode": run.spec["hvp"],
        "restarts": run.restarts,
        "total_hvps": run.totals["hvps"],
        "total_gradients": run.totals["gradients"],
        "total_losses": run.totals["losses"],
        "hvps_per_accepted_step": run.totals["hvps"] / state.accepted if state.accepted else None,
        "curvature_bases": state.curvature_bases,
        "final_M": state.M,
        "stop_reason": state.stop_reason,
        "final_loss": run.final_loss if run.final_loss is not None else state.final_loss,
        "objective": opts.objective,
        **({"final_objective": state.final_loss} if opts.objective != "retain" else {}),
        **({"stop_checks": list(state.stop_checks)} if state.stop_checks else {}),
        **({"stop_rule": rule_for(lambda: None, opts).describe()} if opts.calibration is not None else {}),
        "forgetting": forgetting_of(state.stop_checks),
        "final_grad_norm": state.final_grad_norm,
        "update_norm": update_norm,
        "peak_memory_mb": max(w["peak_rss_mb"] for w in ws),
        "peak_memory_source": "peak RSS of the worker processes (max over ranks)",
        "num_steps": len(steps),
        "accepted_steps": sum(1 for s in steps if s.accepted),
        "coordinator_bytes_total": m["bytes"],
        "coordinator_bytes_per_lanczos_iteration": m["bytes"] / m["hvps"],
        "cost": run.cost.as_dict(),
        "time_breakdown": {
            "compute_s": max(w["compute_s"] for w in ws),
            "allreduce_s": max(w["allreduce_s"] for w in ws),
            "coordinator_s": coordinator_s,
            "coordinator_share": coordinator_s / max(run_s, 1e-12),
            # Round trips = driver calls it waited for. The whole run (method and final gather) per Lanczos
            # iteration (one HVP = one iteration); posted calls (vector updates, snapshots, checkpoints)
            # run on the workers before the next round trip and are counted apart.
            "driver_round_trips": m["whole_run_calls"],
            "driver_round_trips_per_lanczos_iteration": m["whole_run_calls"] / m["hvps"],
            "round_trips_by_call": m["whole_run_by_call"],
            "posted_calls": m["posted"],
            "posted_calls_by_call": m["posted_by_call"],
            # the method alone (no final gather), and its solve part (all but OUTER_STEP_CALLS)
            "driver_round_trips_per_hvp_method": m["calls"] / m["hvps"],
            "driver_round_trips_per_lanczos_iteration_solve_only": (m["calls"] - m["outer_calls"])
            / m["hvps"],
            "outer_step_round_trips": m["outer_calls"],
            "worker_wait_s": wait_s,
            "setup_s": run.times["setup_s"],
            "gather_s": run.times["gather_s"],
        },
        "output_dir": run.saved,
        "options": opts.public_dict() if hasattr(opts, "public_dict") else {},
    }
