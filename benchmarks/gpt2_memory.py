"""Per-worker peak memory of one cure_newton outer step on a GPT-2-shaped model under ZeRO-3.

For each worker count N (default 1 and 2) it builds the engine's own group (``build_group``: Ray actors as
DeepSpeed ZeRO-3 ranks, FD HVP), each rank holding ``rows_per_worker`` rows of ``seq_len`` random tokens,
and runs one cure_newton outer step through ``run_curvature_method`` on the :class:`RayOracle` (the same
path ``unlearn(workers=N)`` takes, without its final consolidated-weights gather). Memory is read from
outside the workers through ``/proc/<pid>``:

- ``setup_peak_mb``: VmHWM after ``build_group`` (the lifetime peak so far: unpickling the model, DeepSpeed
  partitioning it);
- ``step_peak_mb``: VmHWM during the step alone (the high-water mark is reset through ``clear_refs`` right
  after setup), and ``base_rss_mb`` (VmRSS just before the step);
- the shard sizes behind them: this rank's parameters, gradients and Krylov basis (``krylov_max_iter + 3``
  shard vectors: the basis, the gradient and the step; float32 each).

Usage::

    python benchmarks/gpt2_memory.py --out runs/gpt2mem          # GPT-2 124M shape, 1 vs 2 workers
    python benchmarks/gpt2_memory.py --small --out /tmp/x        # a tiny GPT-2 (the test's config)
    python benchmarks/gpt2_memory.py --pickled --out runs/pk     # a live module shipped by pickle
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

TARGET_RATIO = 0.55


def gpt2_workload(small: bool, rows: int, seq_len: int, seed: int = 0):
    """(model, loss_fn, dataset): GPT-2 124M shape (or a 2-layer, 64-wide one) with random weights/tokens."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from dist_unlearn.bench.models import ColumnRows, lm_loss

    torch.manual_seed(seed)
    if small:
        cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_positions=max(64, seq_len))
    else:
        cfg = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
    cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0.0
    model = GPT2LMHeadModel(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (rows, seq_len), generator=g)
    return model, lm_loss, ColumnRows(input_ids=ids)


def _proc_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    raise KeyError(key)


def _reset_hwm(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_one(
    workers: int,
    *,
    small: bool,
    rows_per_worker: int,
    seq_len: int,
    krylov_max_iter: int,
    pickled: bool = False,
) -> dict:
    """One cure_newton outer step on ``workers`` ZeRO-3 ranks; the per-worker memory figures."""
    import tempfile

    import ray

    from dist_unlearn.distributed.startup import build_group
    from dist_unlearn.methods import OuterLoopState, get_method, run_curvature_method
    from dist_unlearn.options import UnlearnOptions

    model, loss_fn, data = gpt2_workload(small, rows_per_worker * workers, seq_len)
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opts = UnlearnOptions(max_steps=1, krylov_max_iter=krylov_max_iter, hvp="fd", M=1.0, seed=0)
    opts = opts.with_defaults(get_method("cure_newton").defaults)
    folder = tempfile.TemporaryDirectory(prefix="gpt2_memory_")
    if pickled:
        source, model_kwargs = model, None
    else:  # the user's path: a saved model folder every rank loads (partitioned) itself
        model.save_pretrained(folder.name)
        source, model_kwargs = folder.name, {"task": "causal_lm"}
    del model
    t0 = time.perf_counter()
    # micro-batch = the rows of one rank: rank r reads micro-batch r, so every rank has one, as in the
    # 1-worker run (the engine's micro-batches are global, distributed.objective._my_blocks)
    group, oracle = build_group(
        workers, source, loss_fn, data, zero_stage=3, hvp="fd", seed=0, model_kwargs=model_kwargs,
        batch_size=rows_per_worker,
    )  # fmt: skip
    del source
    try:
        setup_s = time.perf_counter() - t0
        pids = group.execute_all("pid")
        nodes = {ray.util.get_node_ip_address()}
        local = len(nodes) == 1  # /proc of the actors is readable only on this node
        setup_peak = [_proc_mb(p, "VmHWM") for p in pids] if local else [None] * workers
        base = [_proc_mb(p, "VmRSS") for p in pids] if local else [None] * workers
        reset = all(_reset_hwm(p) for p in pids) if local else False
        layout = group.execute_all("layout")
        local_len = [sum(ps for ps, _ in lay["parts"]) for lay in layout]
        t1 = time.perf_counter()
        state = OuterLoopState(seed=0)
        steps = run_curvature_method("cure_newton", oracle, opts, state=state)
        step_s = time.perf_counter() - t1
        step_peak = [_proc_mb(p, "VmHWM") for p in pids] if local and reset else [None] * workers
        wstats = group.execute_all("stats")
    finally:
        group.shutdown()
        folder.cleanup()
    mb = 4 / 2**20
    per_worker = []
    for r in range(workers):
        per_worker.append(
            {
                "rank": r,
                "setup_peak_mb": setup_peak[r],
                "base_rss_mb": base[r],
                "step_peak_mb": step_peak[r],
                "lifetime_peak_rss_mb": wstats[r]["peak_rss_mb"],
                "params_shard_mb": local_len[r] * mb,
                "grads_shard_mb": local_len[r] * mb,
                "krylov_basis_mb": (krylov_max_iter + 3) * local_len[r] * mb,
                "hvps": wstats[r]["counters"]["hvps"],
            }
        )
    return {
        "workers": workers,
        "model_source": "pickled module" if pickled else "save_pretrained folder (path)",
        "num_params": num_params,
        "rows": rows_per_worker * workers,
        "seq_len": seq_len,
        "steps_completed": len(steps),
        "stop_reason": state.stop_reason,
        "accepted": [bool(s.accepted) for s in steps],
        "setup_s": setup_s,
        "step_s": step_s,
        "per_worker": per_worker,
    }


def _max(run: dict, key: str) -> float | None:
    vals = [w[key] for w in run["per_worker"] if w[key] is not None]
    return max(vals) if vals else None


def measure(
    worker_counts: list[int],
    *,
    small: bool,
    rows_per_worker: int,
    seq_len: int,
    krylov_max_iter: int,
    pickled: bool = False,
):
    """Run every worker count (Ray started here if needed, and stopped) and compare to the 1-worker run."""
    from dist_unlearn.bench.scaleout import ray_session

    runs = []
    with ray_session(max(worker_counts)):
        for n in worker_counts:
            runs.append(
                run_one(
                    n,
                    small=small,
                    rows_per_worker=rows_per_worker,
                    seq_len=seq_len,
                    krylov_max_iter=krylov_max_iter,
                    pickled=pickled,
                )
            )
    ref = next((r for r in runs if r["workers"] == 1), None)
    for r in runs:
        for w in r["per_worker"]:  # the rank's peak over the load phase and the step
            w["run_peak_mb"] = max(
                (x for x in (w["setup_peak_mb"], w["step_peak_mb"]) if x is not None), default=None
            )
        for key in ("step_peak_mb", "setup_peak_mb", "run_peak_mb", "lifetime_peak_rss_mb"):
            a, b = _max(r, key), _max(ref, key) if ref else None
            r[f"ratio_{key}"] = a / b if a is not None and b else None
    return runs


def table(runs: list[dict]) -> str:
    hdr = (
        f"{'N':>2} {'load peak MB':>12} {'ratio load':>10} {'step peak MB':>12} {'ratio step':>10} "
        f"{'ratio run':>9} {'params MB':>9} {'grads MB':>8} {'basis MB':>8} {'load s':>7} {'step s':>7}"
    )
    lines = [hdr]
    f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for r in runs:
        lines.append(
            f"{r['workers']:>2} {f(_max(r, 'setup_peak_mb')):>12} {f(r['ratio_setup_peak_mb']):>10} "
            f"{f(_max(r, 'step_peak_mb')):>12} {f(r['ratio_step_peak_mb']):>10} "
            f"{f(r['ratio_run_peak_mb']):>9} "
            f"{f(_max(r, 'params_shard_mb')):>9} {f(_max(r, 'grads_shard_mb')):>8} "
            f"{f(_max(r, 'krylov_basis_mb')):>8} {r['setup_s']:>7.1f} {r['step_s']:>7.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from dist_unlearn.errors import ConfigError

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="new (or empty) folder for result.json")
    ap.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    ap.add_argument("--rows-per-worker", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--krylov-max-iter", type=int, default=5)
    ap.add_argument("--small", action="store_true", help="a 2-layer 64-wide GPT-2 instead of 124M")
    ap.add_argument("--pickled", action="store_true", help="ship a live module (default: a saved folder)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    if out.exists() and any(out.iterdir()) and not a.overwrite:
        raise ConfigError(f"--out {str(out)!r} exists and is not empty; give a new folder or --overwrite.")
    counts = [int(x) for x in a.workers.split(",") if x.strip()]
    if not counts or min(counts) < 1:
        raise ConfigError(f"--workers {a.workers!r}: give positive integers, e.g. 1,2.")
    runs = measure(
        counts,
        small=a.small,
        rows_per_worker=a.rows_per_worker,
        seq_len=a.seq_len,
        krylov_max_iter=a.krylov_max_iter,
        pickled=a.pickled,
    )
    print(table(runs))
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()} cpus={os.cpu_count()}",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "options": {
            "max_steps": 1,
            "krylov_max_iter": a.krylov_max_iter,
            "hvp": "fd",
            "M": 1.0,
            "zero_stage": 3,
            "batch_size": a.rows_per_worker,
            "model_source": "pickled module" if a.pickled else "save_pretrained folder (path)",
        },
        "target_ratio": TARGET_RATIO,
        "runs": runs,
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out / "result.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
