"""Scale-out benchmark of the distributed engine: worker counts x ZeRO stages on one workload.

For every (workers N, ZeRO stage, HVP mode) it starts a :class:`~dist_unlearn.distributed.WorkerGroup`, wraps
it in a :class:`~dist_unlearn.distributed.RayOracle`, and times on the driver:

- gradient and HVP (median of ``reps``), and the ratio of their worker compute times (HVP / gradient);
- ``k`` Lanczos iterations (the solver's own :func:`~dist_unlearn.solvers.lanczos` on the sharded space),
  split per iteration into compute and all-reduce (the workers' own timers, mean over ranks: a rank waiting
  for a slower one counts that wait as all-reduce) and coordinator (the rest of the driver's wall time: Ray
  round trips, serialisation, the driver's own scalar work, and the workers' vector operations, which the
  engine's timers do not count);
- a no-op call on every actor: round trip and submission cost per actor (the cost model's c0 and c1);
- driver round trips, scalar all-reduces and bytes the driver received per Lanczos iteration;
- HVP throughput (HVPs/s, retain tokens/s) and strong-scaling efficiency E(N) = T(1) / (N T(N)) against the
  1-worker run of the same stage and mode.

Under ZeRO-3 DeepSpeed's own parameter all-gathers and gradient reduce-scatters run inside the engine's
forward/backward and are counted as compute; the all-reduce column holds the engine's explicit collectives.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from dist_unlearn.bench.models import BenchWorkload, make_workload
from dist_unlearn.errors import ConfigError, DistributedError


def resolve_hvp(hvp: str, zero_stage: int) -> list[str]:
    """HVP modes to run at a stage: "auto" = exact under ZeRO 0-2, FD under ZeRO-3; "both" = all possible."""
    if hvp == "auto":
        return ["fd"] if zero_stage == 3 else ["exact"]
    if hvp == "both":
        return ["fd"] if zero_stage == 3 else ["exact", "fd"]
    if hvp in ("fd", "exact"):
        if hvp == "exact" and zero_stage == 3:
            return []  # not possible under ZeRO-3 (released parameters): listed under "skipped"
        return [hvp]
    raise ConfigError(f"hvp={hvp!r} is not a benchmark HVP mode; allowed: 'auto', 'both', 'fd', 'exact'.")


@contextlib.contextmanager
def ray_session(max_workers: int, use_gpu: bool = False) -> Iterator[None]:
    """Join the Ray instance of this process (a ``ray job submit`` job, or RAY_ADDRESS), else start a local
    one sized for ``max_workers`` rank actors; shut down only what was started here."""
    import ray

    from dist_unlearn.distributed.startup import ensure_ray

    started = ensure_ray(max_workers, max_workers if use_gpu else 0)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _start(wl: BenchWorkload, workers: int, zero_stage: int, hvp: str, seed: int, use_gpu: bool):
    """The engine's own group and oracle (``build_group``) for this workload, and the group's setup info."""
    from dist_unlearn.distributed.startup import build_group

    group, oracle = build_group(
        workers, wl.model, wl.loss_fn, wl.data, zero_stage=zero_stage, hvp=hvp, seed=seed, use_gpu=use_gpu
    )
    return group, oracle, {"num_params": wl.num_params}


class _Probe:
    """Counts the driver's calls per worker method and reads the workers' compute / all-reduce timers."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.counts: Counter[str] = Counter()
        inner = group.execute_all

        def counted(method: str, *args: Any, **kwargs: Any) -> list[Any]:
            self.counts[method] += 1
            return inner(method, *args, **kwargs)

        group.execute_all = counted  # this instance only: RayOracle / ShardedSpace call it through the group

    def snapshot(self) -> dict[str, Any]:
        """Counters read around one ``stats`` round trip (which itself is excluded from every delta)."""
        calls, nbytes, t_pre = self.group.calls, self.group.bytes_received, time.perf_counter()
        stats = self.group._get([a.stats.remote() for a in self.group.actors], what="stats")
        return {
            "t_pre": t_pre,
            "t_post": time.perf_counter(),
            "calls_pre": calls,
            "calls_post": self.group.calls,
            "bytes_pre": nbytes,
            "bytes_post": self.group.bytes_received,
            "compute": statistics.fmean(s["compute_s"] for s in stats),
            "allreduce": statistics.fmean(s["allreduce_s"] for s in stats),
            "scalars": statistics.fmean(s["counters"].get("scalar_allreduces", 0) for s in stats),
            "counts": Counter(self.counts),
        }

    @staticmethod
    def delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        wall = b["t_pre"] - a["t_post"]
        compute, allreduce = b["compute"] - a["compute"], b["allreduce"] - a["allreduce"]
        return {
            "wall_s": wall,
            "compute_s": compute,
            "allreduce_s": allreduce,
            "coordinator_s": max(wall - compute - allreduce, 0.0),
            "calls": b["calls_pre"] - a["calls_post"],
            "bytes": b["bytes_pre"] - a["bytes_post"],
            # counted by the workers: the fused call's alpha, reorthogonalisation dots and beta, and the
            # HVP's own (the FD step's |w|, |v|)
            "scalar_allreduces": b["scalars"] - a["scalars"],
        }


def noop_round_trips(group: Any, reps: int = 20) -> dict[str, float]:
    """Driver-side cost of one call on every actor with no work in it (``num_vectors``).

    Returns the median round trip and the median time the driver spends submitting one actor's task: the
    coordinator's fixed latency c0 and its per-worker cost c1, measured without compute or collectives.
    """
    import ray

    trips, submits = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        refs = [a.num_vectors.remote() for a in group.actors]
        t1 = time.perf_counter()
        ray.get(refs)
        trips.append(time.perf_counter() - t0)
        submits.append((t1 - t0) / len(group.actors))
    return {
        "noop_round_trip_s": statistics.median(trips),
        "noop_submit_s_per_worker": statistics.median(submits),
    }


def _timed(probe: _Probe, fn: Callable[[], Any], reps: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(reps):
        a = probe.snapshot()
        fn()
        out.append(probe.delta(a, probe.snapshot()))
    return out


def _hvp_waited(oracle: Any, group: Any, v: Any) -> None:
    """One HVP, waited for: the oracle posts HVPs (the driver needs only the handle), so a no-op call on
    every actor follows it (Ray runs an actor's tasks in order) before the result is released."""
    h = oracle.hvp(v)
    group.execute_all("num_vectors")
    oracle.space.release(h)


def bench_one(
    wl: BenchWorkload,
    workers: int,
    zero_stage: int,
    hvp: str,
    *,
    iterations: int = 8,
    reps: int = 3,
    seed: int = 0,
    use_gpu: bool = False,
) -> dict[str, Any]:
    """Measure one configuration (see the module docstring); returns a JSON-able dict."""
    from dist_unlearn.solvers import lanczos

    t0 = time.perf_counter()
    group, oracle, info = _start(wl, workers, zero_stage, hvp, seed, use_gpu)
    setup_s = time.perf_counter() - t0
    try:
        probe = _Probe(group)
        _, g = oracle.loss_and_gradient()  # warm-up (first-call allocations, DeepSpeed hooks)
        space = oracle.space
        v = space.copy(g)
        space.scale(1.0 / max(space.norm(v), 1e-30), v)
        space.release(oracle.hvp(v))
        grads = _timed(probe, lambda: space.release(oracle.gradient()), reps)
        hvps = _timed(probe, lambda: _hvp_waited(oracle, group, v), reps)
        a = probe.snapshot()
        res = lanczos(oracle.hvp, v, iterations, space=space, store_basis=False)
        lz = probe.delta(a, probe.snapshot())
        k = max(int(res.iterations), 1)
        noop = noop_round_trips(group)
    finally:
        group.shutdown()

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    rows_tokens = len(wl.data) * wl.tokens_per_row
    hvp_s, grad_s = med(hvps, "wall_s"), med(grads, "wall_s")
    return {
        "ok": True,
        "model": wl.name,
        "params": info["num_params"],
        "rows": len(wl.data),
        "tokens": rows_tokens,
        "workers": workers,
        "zero_stage": zero_stage,
        "hvp": hvp,
        "setup_s": setup_s,
        "grad_s": grad_s,
        "hvp_s": hvp_s,
        "grad_compute_s": med(grads, "compute_s"),
        "hvp_compute_s": med(hvps, "compute_s"),
        "hvp_over_grad": med(hvps, "compute_s") / max(med(grads, "compute_s"), 1e-12),
        "hvp_over_grad_wall": hvp_s / grad_s,
        "hvps_per_s": 1.0 / hvp_s,
        "hvp_tokens_per_s": rows_tokens / hvp_s,
        "lanczos_iterations": k,
        "iteration_s": lz["wall_s"] / k,
        "iteration_compute_s": lz["compute_s"] / k,
        "iteration_allreduce_s": lz["allreduce_s"] / k,
        "iteration_coordinator_s": lz["coordinator_s"] / k,
        "calls_per_iteration": lz["calls"] / k,
        "driver_round_trips_per_lanczos_iteration": lz["calls"] / k,
        "coordinator_share": lz["coordinator_s"] / max(lz["wall_s"], 1e-12),
        "scalar_allreduces_per_iteration": lz["scalar_allreduces"] / k,
        "coordinator_bytes_per_iteration": lz["bytes"] / k,
        "coordinator_s_per_call": lz["coordinator_s"] / max(lz["calls"], 1),
        **noop,
    }


def add_efficiency(runs: list[dict[str, Any]]) -> None:
    """E(N) = T(1) / (N T(N)) for the HVP and the Lanczos iteration, against the 1-worker run of the same
    stage and HVP mode (None when that run is missing)."""
    base = {(r["zero_stage"], r["hvp"]): r for r in runs if r.get("ok") and r["workers"] == 1}
    for r in runs:
        b = base.get((r.get("zero_stage"), r.get("hvp")))
        ok = b is not None and r.get("ok")
        r["hvp_efficiency"] = b["hvp_s"] / (r["workers"] * r["hvp_s"]) if ok else None
        r["iteration_efficiency"] = b["iteration_s"] / (r["workers"] * r["iteration_s"]) if ok else None
        r["hvp_speedup"] = b["hvp_s"] / r["hvp_s"] if ok else None


def run_bench(
    workers: list[int],
    zero_stages: list[int],
    *,
    model: str = "mlp",
    hvp: str = "auto",
    rows: int = 64,
    iterations: int = 8,
    reps: int = 3,
    seed: int = 0,
    use_gpu: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every (workers, stage, HVP mode) configuration on one workload; a failed one is recorded, not fatal."""
    if not workers or any((not isinstance(n, int)) or n < 1 for n in workers):
        raise ConfigError(f"workers={workers!r}: give positive integers, e.g. [1, 2].")
    if not zero_stages or any(z not in (0, 1, 2, 3) for z in zero_stages):
        raise ConfigError(f"zero stages {zero_stages!r}: allowed 0, 1, 2, 3.")
    if iterations < 1 or reps < 1 or rows < max(workers):
        raise ConfigError(f"iterations={iterations}, reps={reps} must be >= 1, rows={rows} >= max(workers).")
    log = log or (lambda msg: None)
    wl = make_workload(model, rows=rows, seed=seed)
    runs: list[dict[str, Any]] = []
    skipped = [f"ZeRO-{z} {hvp} (exact HVP needs ZeRO 0-2)" for z in zero_stages if not resolve_hvp(hvp, z)]
    for msg in skipped:
        log(f"bench: skipping {msg}")
    with ray_session(max(workers), use_gpu):
        for z in zero_stages:
            for mode in resolve_hvp(hvp, z):
                for n in sorted(set(workers)):
                    log(f"bench: {n} worker(s), ZeRO-{z}, {mode} HVP ...")
                    try:
                        r = bench_one(
                            wl, n, z, mode, iterations=iterations, reps=reps, seed=seed, use_gpu=use_gpu
                        )
                    except (DistributedError, RuntimeError) as e:
                        r = {"ok": False, "workers": n, "zero_stage": z, "hvp": mode, "error": str(e)[:500]}
                    runs.append(r)
    add_efficiency(runs)
    return {
        "benchmark": "dist-unlearn bench (scale-out)",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.node()} {os.cpu_count()} CPU(s), {'GPU' if use_gpu else 'CPU'} workers",
        "model": model,
        "num_params": wl.num_params,
        "rows": rows,
        "tokens_per_row": wl.tokens_per_row,
        "iterations": iterations,
        "reps": reps,
        "runs": runs,
        "skipped": skipped,
    }
