"""The cheapest CureNewton configuration that still meets the quality targets (small MLP cases).

    python benchmarks/experiments/cost_sweep.py random10 class flipped40 --threads 1
    python benchmarks/experiments/cost_sweep.py memorised --grid memorised --threads 1
    python benchmarks/experiments/cost_sweep.py random10 --grid first_order --threads 1

Trains each case's original and retrained model once (``mlp_cases.Setting``), then runs every variant of
the chosen grid on a copy of the original with ``unlearn()`` and reports ToW, accuracies, the oracle-free
verdict and ``stats["cost"]["example_passes"]`` as % of retraining's. A variant whose name ends in ``@cap``
runs with ``max_example_passes`` = the target fraction of retraining's passes (10%, memorised 25%), so it
can never cost more; the others run uncapped. Writes ``benchmarks/experiments/tables/cost_sweep_<tag>.md``
and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlp_cases import Setting, evaluate, measure  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FULL = {"batch_size": 4096}  # one chunk per oracle pass (the data are tiny); the pass count is unchanged


def _cn(**kw) -> tuple[str, dict]:
    return "cure_newton", {**FULL, **kw}


def _st(**kw) -> tuple[str, dict]:
    return "cure_newton_stochastic", {**FULL, **kw}


CHEAP = {"first_M_tries": 1, "eig_iterations": 3}
"""The first-step overheads cut: the M0 estimate (10 -> 3 HVPs) and the first-M search (7 -> 1 loss)."""

GRIDS: dict[str, dict[str, tuple[str, dict]]] = {
    "l2": {
        "defaults": _cn(),
        "defaults@cap": _cn(),
        "s256 k10 st5": _cn(hvp_sample=256, krylov_max_iter=10, max_steps=5),
        "s256 k10 st5 cheap": _cn(hvp_sample=256, krylov_max_iter=10, max_steps=5, **CHEAP),
        "s128 k10 st10 cheap": _cn(hvp_sample=128, krylov_max_iter=10, max_steps=10, **CHEAP),
        "s128 k20 st5 cheap": _cn(hvp_sample=128, krylov_max_iter=20, max_steps=5, **CHEAP),
        "s256 k20 st3 cheap": _cn(hvp_sample=256, krylov_max_iter=20, max_steps=3, **CHEAP),
        "s256 k10 st10 cheap@cap": _cn(hvp_sample=256, krylov_max_iter=10, max_steps=10, **CHEAP),
        "fd s256 k10 st5 cheap": _cn(hvp="fd", hvp_sample=256, krylov_max_iter=10, max_steps=5, **CHEAP),
        "infl s256 k10 st5 cheap": _cn(
            gradient="influence", hvp_sample=256, krylov_max_iter=10, max_steps=5, **CHEAP
        ),
        "full k10 st3 cheap": _cn(hvp_sample="all", krylov_max_iter=10, max_steps=3, **CHEAP),
        "full k20 st2 cheap": _cn(hvp_sample="all", krylov_max_iter=20, max_steps=2, **CHEAP),
        "full k30 cheap@cap": _cn(hvp_sample="all", **CHEAP),
        "full k10 cheap@cap": _cn(hvp_sample="all", krylov_max_iter=10, **CHEAP),
        "fd full k30 cheap@cap": _cn(hvp="fd", hvp_sample="all", **CHEAP),
        "infl full k30 cheap@cap": _cn(gradient="influence", hvp_sample="all", **CHEAP),
        "s1024 k30 cheap@cap": _cn(hvp_sample=1024, **CHEAP),
        "search eig3 k30@cap": _cn(hvp_sample="all", eig_iterations=3),
        "search eig3 fd k30@cap": _cn(hvp="fd", hvp_sample="all", eig_iterations=3),
        "Minit1e-3 k30@cap": _cn(hvp_sample="all", M_init=1e-3, first_M_tries=1),
        "Minit1e-4 k30@cap": _cn(hvp_sample="all", M_init=1e-4, first_M_tries=1),
        "M1e-3 k30 st1": _cn(hvp_sample="all", M=1e-3, max_steps=1),
        "M1e-4 k30 st1": _cn(hvp_sample="all", M=1e-4, max_steps=1),
        "M1e-4 k30 st3": _cn(hvp_sample="all", M=1e-4, max_steps=3),
        "M1e-4 k30@cap": _cn(hvp_sample="all", M=1e-4, max_steps=20),
        "M1e-5 k30@cap": _cn(hvp_sample="all", M=1e-5, max_steps=20),
        "M1e-4 fd k30@cap": _cn(hvp="fd", hvp_sample="all", M=1e-4, max_steps=20),
        "M1e-4 tol1e-3 k60 st2": _cn(
            hvp_sample="all", M=1e-4, max_steps=2, krylov_tol=1e-3, krylov_max_iter=60
        ),
        "Minit1e-4 eta0.01 fd k30@cap": _cn(
            hvp="fd", hvp_sample="all", M_init=1e-4, first_M_tries=1, arc_eta1=0.01
        ),
        "M1e-4 fd k30 st2": _cn(hvp="fd", hvp_sample="all", M=1e-4, max_steps=2),
        "M1e-3 fd k30@cap": _cn(hvp="fd", hvp_sample="all", M=1e-3, max_steps=20),
        "M1e-5 fd k30@cap": _cn(hvp="fd", hvp_sample="all", M=1e-5, max_steps=20),
        "stoch g256 h64 k10 st10": _st(
            grad_batch_size=256, hvp_batch_size=64, krylov_max_iter=10, max_steps=10
        ),
        "stoch g512 h128 k10 st10 cheap": _st(
            grad_batch_size=512, hvp_batch_size=128, krylov_max_iter=10, max_steps=10, **CHEAP
        ),
        "stoch g512 h128 k10 st20 cheap@cap": _st(
            grad_batch_size=512, hvp_batch_size=128, krylov_max_iter=10, max_steps=20, **CHEAP
        ),
    },
    "memorised": {
        "retain defaults": _cn(),
        **{
            f"{obj} fw{fw}": _cn(objective=obj, forget_weight=fw)
            for obj in ("npo", "grad_diff")
            for fw in (0.05, 0.1, 0.2, 0.5)
        },
        **{
            f"{obj} fw{fw}@cap": _cn(objective=obj, forget_weight=fw)
            for obj in ("npo", "grad_diff")
            for fw in (0.1, 0.2)
        },
        "npo fw0.2 s128 k10 cheap@cap": _cn(
            objective="npo", forget_weight=0.2, hvp_sample=128, krylov_max_iter=10, **CHEAP
        ),
    },
    "memorised_cheap": {
        f"npo fw0.1 {tag}@cap": maker(objective="npo", forget_weight=0.1, **kw)
        for tag, maker, kw in [
            ("fd", _cn, {"hvp": "fd"}),
            ("cheap", _cn, CHEAP),
            ("fd cheap", _cn, {"hvp": "fd", **CHEAP}),
            ("fd s256 k10 cheap", _cn, {"hvp": "fd", "hvp_sample": 256, "krylov_max_iter": 10, **CHEAP}),
            ("s128 k10 cheap", _cn, {"hvp_sample": 128, "krylov_max_iter": 10, **CHEAP}),
            (
                "fd s256 k10 st25 cheap",
                _cn,
                {"hvp": "fd", "hvp_sample": 256, "krylov_max_iter": 10, "max_steps": 25, **CHEAP},
            ),
            (
                "s128 k10 st30 cheap",
                _cn,
                {"hvp_sample": 128, "krylov_max_iter": 10, "max_steps": 30, **CHEAP},
            ),
            (
                "fd Minit0.02 k10",
                _cn,
                {"hvp": "fd", "M_init": 0.02, "first_M_tries": 1, "krylov_max_iter": 10},
            ),
            (
                "fd Minit0.02 k10 st20",
                _cn,
                {"hvp": "fd", "M_init": 0.02, "first_M_tries": 1, "krylov_max_iter": 10, "max_steps": 20},
            ),
            (
                "stoch g256 h128 k10 st20 cheap",
                _st,
                {
                    "grad_batch_size": 256,
                    "hvp_batch_size": 128,
                    "krylov_max_iter": 10,
                    "max_steps": 20,
                    **CHEAP,
                },
            ),
        ]
    },
    "first_order": {
        **{f"{m}@cap": (m, {"epochs": 200}) for m in ("finetune", "npo", "grad_diff", "scrub")},
        "grad_ascent@cap": ("grad_ascent", {"epochs": 200, "lr": 1e-4}),
    },
}


def run(case: str, grid: str, names: list[str] | None) -> dict:

    s = Setting(case)
    original, orig_passes, _ = s.train(TensorDataset(s.X, s.y))
    oracle, re_passes, re_wall = s.train(s.retain)
    ev_orig, ev_oracle = evaluate(s, original), evaluate(s, oracle)
    fraction = 0.25 if case == "memorised" else 0.10
    rows = {
        "original": {**evaluate(s, original, ev_oracle["acc"]), "passes": orig_passes},
        "retrain": {**ev_oracle, "tow": 1.0, "passes": re_passes},
    }
    variants = GRIDS[grid]
    for label, (method, opts) in variants.items():
        if names and label not in names:
            continue
        opts = dict(opts)
        if label.endswith("@cap"):
            opts["max_example_passes"] = fraction * re_passes
        res, ev, wall = measure(s, original, method, opts, ev_orig, ev_oracle)
        st = res.stats
        rows[label] = {
            **ev,
            "method": method,
            "passes": st["cost"]["example_passes"],
            "wall": wall,
            "wall_pct": 100 * wall / re_wall,
            "hvps": st.get("total_hvps"),
            "accepted": st.get("accepted_steps"),
            "stop": st.get("stop_reason"),
            "final_M": st.get("final_M"),
            "options": {k: v for k, v in opts.items() if k != "batch_size"},
        }
        a = ev["acc"]
        print(f"  {case}: {label}: ToW {ev['tow']:.3f} (r {a['retain']:.3f} f {a['forget']:.3f} "
              f"t {a['test']:.3f}) passes {100 * st['cost']['example_passes'] / re_passes:.1f}% "
              f"stop {st.get('stop_reason')} M {st.get('final_M')}", flush=True)  # fmt: skip
    return {"case": case, "grid": grid, "n_retain": len(s.retain), "n_forget": len(s.forget), "rows": rows,
            "target_fraction": fraction, "retrain_passes": re_passes}  # fmt: skip


def table(result: dict) -> str:
    rows, re_p = result["rows"], result["retrain_passes"]
    head = ["variant", "method", "ToW", "acc retain", "acc forget", "acc test", "AUC f/test", "verdict",
            "passes % retrain", "HVPs", "steps", "stop"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, r in rows.items():
        acc, ev = r["acc"], r["evidence"]
        cells = [
            f"*{label}*" if label in ("original", "retrain") else label, r.get("method", "-"),
            f"{r.get('tow', float('nan')):.3f}",
            f"{acc['retain']:.3f}", f"{acc['forget']:.3f}", f"{acc['test']:.3f}",
            f"{ev['forget_vs_unseen_auc']:.3f}", r.get("verdict", {}).get("status", "-"),
            f"{100 * r['passes'] / re_p:.1f}", str(r.get("hvps", "-")), str(r.get("accepted", "-")),
            str(r.get("stop", "-")),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="+")
    ap.add_argument("--grid", default="l2", choices=sorted(GRIDS))
    ap.add_argument("--only", nargs="*", help="run only these variant labels")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default=None, help="output name (default: cases + grid)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out_dir = ROOT / "benchmarks" / "experiments" / "tables"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()} CPU, torch threads {args.threads}"
    cmd = "python benchmarks/experiments/cost_sweep.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    results, text = [], [f"{stamp}. Command: `{cmd.strip()}`.", ""]
    for case in args.cases:
        t0 = time.perf_counter()
        res = run(case, args.grid, args.only)
        results.append(res)
        text += [f"#### {case} (grid {args.grid}; n_retain {res['n_retain']}, n_forget {res['n_forget']}; "
                 f"target <= {100 * res['target_fraction']:.0f}% passes; {time.perf_counter() - t0:.0f} s)",
                 "", table(res), ""]  # fmt: skip
        print(text[-2], flush=True)
    tag = args.tag or "_".join(args.cases) + f"_{args.grid}"
    for ext, body in (("md", "\n".join(text) + "\n"), ("json", json.dumps(results, indent=1, default=float))):
        tmp = out_dir / f".cost_sweep_{tag}.{ext}.tmp"
        tmp.write_text(body)
        tmp.replace(out_dir / f"cost_sweep_{tag}.{ext}")


if __name__ == "__main__":
    main()
