"""Where a Lanczos iteration's time goes on the Ray engine: the driver's round trip, and the ZeRO-3
FD HVP inside a worker.

Two measurements on the bench MLP (``dist_unlearn.bench.models``, 85k parameters, ``--rows`` retain rows):

1. **Round trip of the fused Lanczos call** (``lanczos_step``), split with timestamps taken on both sides
   (``time.perf_counter`` is CLOCK_MONOTONIC, one clock for all processes of a machine): driver submission,
   submission -> worker body start (Ray transport, argument decoding), the body (HVP + dots + axpys), body
   end -> driver has the reply; plus the driver's CPU time per call (its Ray threads included) and a no-op
   call on every actor (Ray's floor).
2. **torch.profiler on rank 0 of the ZeRO-3 FD HVP**: the top operators by self CPU time and the collectives
   per HVP (gloo all-gather / all-reduce / reduce-scatter, ours and DeepSpeed's).

The worker class used here is a subclass of the engine's, defined in this script (Ray ships it by value), so
the engine itself carries no profiling code.

Usage::

    python benchmarks/profile_engine.py --workers 2 --zero 3 --out runs/profile   # JSON + printed summary
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def _subclass():
    from dist_unlearn.distributed.worker import DistWorker

    class ProfiledWorker(DistWorker):
        def timed_lanczos_step(self, *args):
            t0 = time.perf_counter()
            out = self.lanczos_step(*args)
            out["_t"] = (t0, time.perf_counter())
            return out

        def time_hvp(self, v: int, reps: int) -> dict:
            """Wall and CPU (this process, all threads) seconds per HVP: CPU excludes waiting for a
            descheduled peer, so on a shared machine it shows the work a rank does apart from contention."""
            self._hvp_local(self.vecs[v])
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(reps):
                self._hvp_local(self.vecs[v])
            return {"wall": (time.perf_counter() - t0) / reps, "cpu": (time.process_time() - c0) / reps}

        def profile_hvp(self, v: int, reps: int, rows: int) -> dict:
            from torch.profiler import ProfilerActivity, profile

            self._hvp_local(self.vecs[v])  # warm-up
            t0 = time.perf_counter()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(reps):
                    self._hvp_local(self.vecs[v])
            wall = (time.perf_counter() - t0) / reps
            ops = []
            for e in prof.key_averages():
                ops.append(
                    {
                        "name": e.key,
                        "calls_per_hvp": e.count / reps,
                        "self_cpu_ms_per_hvp": e.self_cpu_time_total / 1e3 / reps,
                        "cpu_ms_per_hvp": e.cpu_time_total / 1e3 / reps,
                    }
                )
            ops.sort(key=lambda o: -o["self_cpu_ms_per_hvp"])
            return {"wall_ms_per_hvp": wall * 1e3, "top_ops": ops[:rows]}

    return ProfiledWorker


def measure(workers: int, zero: int, rows: int, reps: int, top: int) -> dict:
    import ray
    import torch

    import dist_unlearn.distributed.worker as worker_mod
    from dist_unlearn.bench.models import make_workload
    from dist_unlearn.bench.scaleout import noop_round_trips, ray_session
    from dist_unlearn.distributed.startup import build_group

    torch.set_num_threads(1)
    worker_mod.DistWorker = _subclass()  # WorkerGroup builds its actors from this name
    hvp = "fd" if zero == 3 else "exact"
    wl = make_workload("mlp", rows=rows, seed=0)
    with ray_session(workers):
        group, oracle = build_group(workers, wl.model, wl.loss_fn, wl.data, zero_stage=zero, hvp=hvp, seed=0)
        try:
            _, g = oracle.loss_and_gradient()
            sp = oracle.space
            v = sp.copy(g)
            sp.scale(1.0 / sp.norm(v), v)
            split, cpu = [], []
            for i in range(reps + 2):
                out = sp.new_handle()
                c0 = time.process_time()
                t0 = time.perf_counter()
                args = (v.id, None, 0.0, [], out.id, 0.0, 1e-10)
                refs = [a.timed_lanczos_step.remote(*args) for a in group.actors]
                t1 = time.perf_counter()
                res = ray.get(refs)
                t2 = time.perf_counter()
                if i >= 2:  # the first calls allocate
                    s, e = min(r["_t"][0] for r in res), max(r["_t"][1] for r in res)
                    split.append({"submit": t1 - t0, "to_body": s - t1, "body": e - s, "reply": t2 - e})
                    cpu.append(time.process_time() - c0)
                sp.release(out)
            trip = {k: statistics.median(x[k] for x in split) * 1e3 for k in split[0]}
            trip["driver_cpu"] = statistics.median(cpu) * 1e3
            trip.update({k: val * 1e3 for k, val in noop_round_trips(group).items()})
            hvp_times = [ray.get([a.time_hvp.remote(v.id, reps) for a in group.actors]) for _ in range(3)]
            per_rank = [
                {k: statistics.median(rep[r][k] for rep in hvp_times) * 1e3 for k in ("wall", "cpu")}
                for r in range(workers)
            ]
            # every rank runs the profiled HVPs (they are collective); rank 0's profile is reported
            prof = ray.get([a.profile_hvp.remote(v.id, reps, top) for a in group.actors])[0]
            prof["per_rank_ms"] = per_rank
        finally:
            group.shutdown()
    return {
        "workers": workers,
        "zero_stage": zero,
        "hvp_mode": hvp,
        "rows": rows,
        "round_trip_ms": trip,
        "hvp": prof,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--zero", type=int, default=3)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default=None, help="folder for profile.json")
    a = ap.parse_args(argv)
    r = measure(a.workers, a.zero, a.rows, a.reps, a.top)
    t = r["round_trip_ms"]
    print(f"workers={a.workers} ZeRO-{a.zero}: fused Lanczos call, ms (median of {a.reps})")
    print(
        f"  submit {t['submit']:.2f}  submit->body {t['to_body']:.2f}  body {t['body']:.2f}  "
        f"body->driver {t['reply']:.2f}  driver CPU {t['driver_cpu']:.2f}  no-op round trip "
        f"{t['noop_round_trip_s']:.2f}"
    )
    for i, t in enumerate(r["hvp"]["per_rank_ms"]):
        print(f"rank {i} HVP: wall {t['wall']:.1f} ms, CPU {t['cpu']:.1f} ms (median of 3 x {a.reps})")
    print(f"rank 0 HVP: {r['hvp']['wall_ms_per_hvp']:.1f} ms wall (profiled); per HVP:")
    for o in r["hvp"]["top_ops"]:
        print(
            f"  {o['name'][:60]:60s} calls {o['calls_per_hvp']:7.1f}  self {o['self_cpu_ms_per_hvp']:7.2f} ms"
        )
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "profile.json").write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
