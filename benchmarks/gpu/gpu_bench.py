#!/usr/bin/env python3
"""GPU benchmark of the engine's rank code: GPT-2 124M under ZeRO-3 (FD HVP) and ZeRO-0 (exact and FD HVP).

Runs one DeepSpeed rank in this process (the engine's ``DistWorker``, world size 1, nccl) on a GPT-2-size
model built from a config (no download) and random token rows, and records gradient time, finite-difference
and exact HVP time, their ratios, the FD error against the exact product, and peak memory. Ray is not needed
(the rank code is what a Ray actor runs); DeepSpeed is, carried as a wheel (see benchmarks/gpu/README.md).

    python3 benchmarks/gpu/gpu_bench.py --out $OUT            # on the GPU machine, ~3-5 minutes on an H100
    python benchmarks/gpu/gpu_bench.py --dry-run --out /tmp/g  # here, CPU, a 2-layer GPT-2, ~1 minute

Phases (each skipped, and said so, once ``--budget-s`` is spent, so the JSON is always written):
  1. ZeRO-3, SDPA attention: gradient and FD HVP (the configuration the engine uses for large models).
  2. ZeRO-0, eager attention: gradient, exact HVP (double backward) and FD HVP on the same vector;
     relative error |FD - exact| / |exact|.
Target: FD HVP <= 2.2 x gradient.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the checkout's dist_unlearn, whether or not it is pip-installed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build(dry_run: bool, attn: str, rows: int, seq: int, seed: int):
    """(model, loss_fn, rows dataset) — GPT-2 124M, or a 2-layer GPT-2 for the CPU dry run."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from dist_unlearn.bench.models import ColumnRows, lm_loss

    torch.manual_seed(seed)
    if dry_run:
        cfg = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=512, n_positions=seq)
    else:
        cfg = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
    cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0.0
    cfg._attn_implementation = attn
    model = GPT2LMHeadModel(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (rows, seq), generator=g)
    return model, lm_loss, ColumnRows(input_ids=ids)


class Rank:
    """One engine rank (DistWorker) in this process, with helpers to time its calls."""

    def __init__(self, stage: int, hvp: str, attn: str, args, use_gpu: bool) -> None:
        import cloudpickle

        from dist_unlearn.bench.models import lm_loss  # noqa: F401  (pickled by reference)
        from dist_unlearn.distributed.startup import worker_spec
        from dist_unlearn.distributed.worker import DistWorker

        model, loss_fn, data = build(args.dry_run, attn, args.rows, args.seq, args.seed)
        self.num_params = sum(p.numel() for p in model.parameters())
        self.tokens = args.rows * args.seq
        self.use_gpu = use_gpu
        t0 = time.perf_counter()
        self.w = DistWorker(0, 1, use_gpu=use_gpu, num_threads=4 if use_gpu else 1)
        spec = worker_spec(zero_stage=stage, hvp=hvp, batch_size=args.batch, seed=args.seed)
        self.w.setup(
            "127.0.0.1",
            free_port(),
            spec,
            cloudpickle.dumps(model),
            cloudpickle.dumps(loss_fn),
            cloudpickle.dumps(data),
        )
        self.setup_s = time.perf_counter() - t0
        self.ids = iter(range(1, 1 << 30))
        gid = next(self.ids)
        self.w.loss_and_gradient(gid)  # warm-up, and the direction for the HVPs
        g = self.w.vecs[gid]
        self.v = next(self.ids)
        self.w.vecs[self.v] = g / g.norm()
        self.sync()

    def sync(self) -> None:
        if self.use_gpu:
            import torch

            torch.cuda.synchronize()

    def time(self, fn, reps: int) -> tuple[float, list[float]]:
        fn()  # warm-up
        times = []
        for _ in range(reps):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), times

    def grad(self) -> None:
        out = next(self.ids)
        self.w.loss_and_gradient(out)
        self.w.vecs.pop(out)

    def hvp(self, mode: str, keep: bool = False):
        self.w.hvp_mode = mode
        out = next(self.ids)
        self.w.hvp(self.v, out)
        hv = self.w.vecs.pop(out)
        return hv if keep else None

    def close(self) -> None:
        """Drop the engine but keep the process group: DeepSpeed caches its groups, so one per process."""
        import gc

        self.w.vecs.clear()
        self.w.engine = self.w.module = self.w.params = None
        gc.collect()
        if self.use_gpu:
            import torch

            torch.cuda.empty_cache()


class InProcessGroup:
    """The :class:`~dist_unlearn.distributed.WorkerGroup` calls that a :class:`RayOracle` makes, on one rank
    in this process (world size 1): the engine's oracle and solver path without Ray."""

    def __init__(self, worker) -> None:
        self.worker, self.num_workers = worker, 1
        self.calls, self.bytes_received, self.wait_s = 0, 0, 0.0
        self.calls_by_method: dict[str, int] = {}
        self.posted_by_method: dict[str, int] = {}

    def execute_all(self, method: str, *args):
        self.calls += 1
        self.calls_by_method[method] = self.calls_by_method.get(method, 0) + 1
        return [getattr(self.worker, method)(*args)]

    def submit_all(self, method: str, *args) -> None:
        getattr(self.worker, method)(*args)

    def post_all(self, method: str, *args, on_done=None) -> None:
        """A posted call (no reply needed): in process it simply runs now (counted apart from calls)."""
        self.posted_by_method[method] = self.posted_by_method.get(method, 0) + 1
        getattr(self.worker, method)(*args)
        if on_done is not None:
            on_done()

    def release_later(self, ids: list[int]) -> None:
        self.worker.release(list(ids))  # in process: free at once


def cure_newton_step(r, args, use_gpu: bool) -> dict:
    """One CureNewton outer step (ARC, automatic M, Krylov subproblem) through RayOracle on rank ``r``."""
    from dist_unlearn.cost import cost_between
    from dist_unlearn.distributed.oracle import RayOracle
    from dist_unlearn.distributed.run_state import OUTER_STEP_CALLS
    from dist_unlearn.methods import OuterLoopState, run_curvature_method
    from dist_unlearn.options import UnlearnOptions

    r.w.hvp_mode = "fd"
    reset_peak(use_gpu)
    group = InProcessGroup(r.w)
    oracle = RayOracle(group, num_rows=args.rows)
    state = OuterLoopState(seed=args.seed)
    cost0 = oracle.cost.snapshot()  # the rank already did phase 1's timed passes
    r.sync()
    t0 = time.perf_counter()
    run_curvature_method("cure_newton", oracle, UnlearnOptions(max_steps=1, hvp="fd"), state=state)
    r.sync()
    wall = time.perf_counter() - t0
    steps = state.history
    return {
        "wall_s": wall,
        "outer_steps": len(steps),
        "accepted": [bool(s.accepted) for s in steps],
        "hvps": oracle.counters["hvps"],
        "gradients": oracle.counters["gradients"],
        "driver_calls": group.calls,
        "calls_by_method": dict(group.calls_by_method),
        "posted_by_method": dict(group.posted_by_method),
        # the solve's calls (all but the outer step's loss/gradient/update/snapshot calls) per iteration
        "driver_round_trips_per_lanczos_iteration": (
            group.calls - sum(group.calls_by_method.get(m, 0) for m in OUTER_STEP_CALLS)
        )
        / max(1, oracle.counters["hvps"]),
        "M": [float(s.M) for s in steps],
        "cost": cost_between(cost0, oracle.cost.snapshot()),
        "peak_gib": peak_gib(use_gpu),
    }


def peak_gib(use_gpu: bool) -> float | None:
    if not use_gpu:
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**30


def reset_peak(use_gpu: bool) -> None:
    if use_gpu:
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run(args) -> dict:
    import torch

    use_gpu = not args.dry_run
    if use_gpu and not torch.cuda.is_available():
        sys.exit("gpu_bench: no CUDA device; use --dry-run on a CPU machine.")
    os.environ["DS_ACCELERATOR"] = "cuda" if use_gpu else "cpu"
    if use_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 weights (FD needs them), TF32 tensor cores
        torch.backends.cudnn.allow_tf32 = True
    import deepspeed

    start = time.perf_counter()
    res: dict = {
        "benchmark": "benchmarks/gpu/gpu_bench.py",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": torch.cuda.get_device_name(0) if use_gpu else f"CPU ({platform.processor() or 'unknown'})",
        "dry_run": args.dry_run,
        "versions": {
            "torch": torch.__version__,
            "deepspeed": deepspeed.__version__,
            "transformers": __import__("transformers").__version__,
            "python": platform.python_version(),
        },
        "workload": {
            "rows": args.rows,
            "seq": args.seq,
            "tokens": args.rows * args.seq,
            "batch": args.batch,
            "reps": args.reps,
            "dtype": "fp32 weights, TF32 matmuls" if use_gpu else "fp32",
        },
        "phases": {},
        "skipped": [],
    }

    def over_budget(name: str) -> bool:
        if time.perf_counter() - start > args.budget_s:
            res["skipped"].append(name)
            print(f"[gpu_bench] budget of {args.budget_s:.0f} s spent: skipping {name}", flush=True)
            return True
        return False

    if not over_budget("zero3_fd"):
        print("[gpu_bench] phase 1: ZeRO-3, SDPA attention: gradient + FD HVP", flush=True)
        reset_peak(use_gpu)
        r = Rank(3, "fd", "sdpa", args, use_gpu)
        grad_s, grad_all = r.time(r.grad, args.reps)
        fd_s, fd_all = r.time(lambda: r.hvp("fd"), args.reps)
        res["params"] = r.num_params
        res["phases"]["zero3_fd"] = {
            "zero_stage": 3,
            "attention": "sdpa",
            "setup_s": r.setup_s,
            "grad_s": grad_s,
            "fd_hvp_s": fd_s,
            "fd_over_grad": fd_s / grad_s,
            "grad_tokens_per_s": r.tokens / grad_s,
            "grad_runs_s": grad_all,
            "fd_runs_s": fd_all,
            "peak_gib": peak_gib(use_gpu),
        }
        if not over_budget("cure_newton_step"):
            print("[gpu_bench] phase 1b: one cure_newton outer step (automatic M) on this rank", flush=True)
            res["phases"]["cure_newton_step"] = cure_newton_step(r, args, use_gpu)
        r.close()

    if not over_budget("zero0_exact"):
        print("[gpu_bench] phase 2: ZeRO-0, eager attention: gradient + exact HVP + FD HVP", flush=True)
        reset_peak(use_gpu)
        r = Rank(0, "exact", "eager", args, use_gpu)
        grad_s, _ = r.time(r.grad, args.reps)
        exact_s, _ = r.time(lambda: r.hvp("exact"), args.reps)
        fd_s, _ = r.time(lambda: r.hvp("fd"), args.reps)
        hv_exact = r.hvp("exact", keep=True).double()
        hv_fd = r.hvp("fd", keep=True).double()
        err = float((hv_fd - hv_exact).norm() / hv_exact.norm().clamp_min(1e-300))
        res["params"] = r.num_params
        res["phases"]["zero0_exact"] = {
            "zero_stage": 0,
            "attention": "eager",
            "setup_s": r.setup_s,
            "grad_s": grad_s,
            "exact_hvp_s": exact_s,
            "fd_hvp_s": fd_s,
            "exact_over_grad": exact_s / grad_s,
            "fd_over_grad": fd_s / grad_s,
            "fd_rel_error": err,
            "peak_gib": peak_gib(use_gpu),
        }
        r.close()
    ph = res["phases"]
    if "zero3_fd" in ph and "zero0_exact" in ph:  # the comparison asked for: exact (eager) vs flash gradient
        res["exact_over_flash_grad"] = ph["zero0_exact"]["exact_hvp_s"] / ph["zero3_fd"]["grad_s"]
    res["total_s"] = time.perf_counter() - start
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return res


def table(res: dict) -> str:
    head = (
        f"{'phase':<13}{'grad ms':>10}{'FD ms':>10}{'exact ms':>10}{'FD/grad':>9}{'exact/grad':>11}"
        f"{'FD err':>10}{'peak GiB':>10}"
    )
    lines = [
        f"{res['device']}, GPT-2 {res.get('params', 0):,} params, {res['workload']['tokens']} tokens/pass",
        head,
    ]
    for name, p in res["phases"].items():
        if name == "cure_newton_step":
            continue

        def f(key, scale=1.0, spec=".1f", p=p):
            return format(p[key] * scale, spec) if p.get(key) is not None else "-"

        lines.append(
            f"{name:<13}{f('grad_s', 1e3):>10}{f('fd_hvp_s', 1e3):>10}{f('exact_hvp_s', 1e3):>10}"
            f"{f('fd_over_grad', spec='.2f'):>9}{f('exact_over_grad', spec='.2f'):>11}"
            f"{f('fd_rel_error', spec='.1e'):>10}{f('peak_gib', spec='.2f'):>10}"
        )
    step = res["phases"].get("cure_newton_step")
    if step is not None:
        lines.append(
            f"cure_newton outer step (ZeRO-3, FD, automatic M): {step['wall_s']:.1f} s, {step['hvps']} HVPs, "
            f"accepted {step['accepted']}, {step['driver_round_trips_per_lanczos_iteration']:.2f} calls/HVP, "
            f"peak {step['peak_gib'] if step['peak_gib'] is not None else '-'} GiB"
        )
    exact = res["phases"].get("zero0_exact", {}).get("exact_over_grad")
    if exact is not None:
        verdict = "met" if exact <= 3.0 else "NOT met"
        lines.append(f"target exact HVP <= 3.0 x gradient: {verdict} ({exact:.2f})")
    if res["skipped"]:
        lines.append(f"skipped (time budget): {', '.join(res['skipped'])}")
    target = res["phases"].get("zero3_fd", {}).get("fd_over_grad")
    if target is not None:
        lines.append(
            f"target FD HVP <= 2.2 x gradient (ZeRO-3): {'met' if target <= 2.2 else 'NOT met'} "
            f"({target:.2f})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny GPT-2: check the script end to end.")
    p.add_argument("--out", default=os.environ.get("OUT", "outputs/gpu_bench"), help="directory for the JSON")
    p.add_argument("--rows", type=int, default=None, help="token rows per pass (default 32, dry run 8)")
    p.add_argument("--seq", type=int, default=None, help="tokens per row (default 512, dry run 32)")
    p.add_argument("--batch", type=int, default=None, help="rows per micro-batch (default 8, dry run 4)")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-s", type=float, default=420.0, help="skip phases not started by then")
    args = p.parse_args(argv)
    dflt = {"rows": (8, 32), "seq": (32, 512), "batch": (4, 8)}
    for k, (dry, gpu) in dflt.items():
        if getattr(args, k) is None:
            setattr(args, k, dry if args.dry_run else gpu)
    if args.dry_run:
        args.reps = min(args.reps, 2)
    res = run(args)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gpu_bench.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=2)
    os.replace(tmp, path)
    print(table(res))
    print(f"[gpu_bench] wrote {path} in {res['total_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
