"""The true hard case of ``cubic_subproblem`` at its defaults: how far above the global minimum, at what cost.

Hard cases: H = Q diag(ev) Q^T (random orthogonal Q), the leftmost eigenvalue -3 simple or triple, the rest
uniform in [-1, 8] (indefinite) or [0.1, 8] (positive definite), g random and then projected *exactly* off
the leftmost eigenspace; n in {20, 60, 100, 200, 400}, M in {0.1, 1, 10, 100}, two seeds: 160 problems.
Measured: (m(d) - m*) / |m*| against the dense eigendecomposition solution (tests/test_solvers_reference.py)
and HVPs. Ordinary problems (the cost side): the test family of tests/test_solvers_reference.random_problem
(pd, indefinite, spiked, singular; n 100; M 0.1, 1, 10; 10 seeds) and the problems of
benchmarks/solver_bench.py (spiked n 1e3..1e5, M 1 and 0.01; the MLP Hessian, M 1 and 0.1).

    python benchmarks/hard_case_bench.py --out benchmarks/results/hard_case_bench.json
    PYTHONPATH=<old checkout> python benchmarks/hard_case_bench.py --label before --out /tmp/before.json
    python benchmarks/hard_case_bench.py --compare /tmp/before.json benchmarks/results/hard_case_bench.json

Writes the JSON; ``--compare`` prints the before/after table and writes a PNG next to the second file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # tests.test_solvers_reference (the dense reference); after PYTHONPATH
sys.path.append(str(ROOT / "benchmarks"))

BOUND = 1e-4


def hard_family():
    for n in (20, 60, 100, 200, 400):
        for M in (0.1, 1.0, 10.0, 100.0):
            for mult in (1, 3):
                for rest in ((-1.0, 8.0), (0.1, 8.0)):
                    for seed in range(2):
                        yield {"n": n, "M": M, "mult": mult, "rest": list(rest), "seed": seed}, seed


def measure_hard() -> list[dict]:
    from dist_unlearn.solvers import cubic_subproblem
    from tests.test_solvers_reference import dense_cubic, exact_hard_case, model, torch_matvec

    rows = []
    for spec, _ in hard_family():
        h, g = exact_hard_case(spec["n"], spec["seed"], spec["mult"], tuple(spec["rest"]))
        res = cubic_subproblem(torch_matvec(h), torch.from_numpy(g), spec["M"])
        d_ref, lam_ref, hard = dense_cubic(h, g, spec["M"])
        m_ref = model(h, g, spec["M"], d_ref)
        gap = (model(h, g, spec["M"], res.step.double().numpy()) - m_ref) / abs(m_ref)
        rows.append({**spec, "gap": gap, "hvps": res.hvps, "hard_case": bool(res.hard_case),
                     "reference_hard_case": bool(hard)})  # fmt: skip
    return rows


def measure_ordinary() -> list[dict]:
    from solver_bench import mlp_problem, spiked_problem

    from dist_unlearn.linalg import TensorSpace
    from dist_unlearn.solvers import cubic_subproblem
    from tests.test_solvers_reference import random_problem, torch_matvec

    rows = []
    for kind in ("pd", "indefinite", "spiked", "singular"):
        for seed in range(10):
            for M in (0.1, 1.0, 10.0):
                h, g = random_problem(kind, 100, seed)
                res = cubic_subproblem(torch_matvec(h), torch.from_numpy(g), M)
                rows.append(
                    {"family": "test", "problem": f"{kind} n=100 seed={seed}", "M": M, "hvps": res.hvps}
                )
    for n in (1_000, 10_000, 100_000):
        mv, g = spiked_problem(n, seed=n)
        for M in (1.0, 0.01):
            res = cubic_subproblem(mv, g, M)
            rows.append({"family": "solver_bench", "problem": f"spiked n={n:.0e}", "M": M, "hvps": res.hvps})
    hvp, g, info = mlp_problem()
    for M in (1.0, 0.1):
        res = cubic_subproblem(hvp, g, M, space=TensorSpace())
        rows.append({"family": "solver_bench", "problem": f"MLP Hessian ({info['params']} params)", "M": M,
                     "hvps": res.hvps})  # fmt: skip
    return rows


def summary(result: dict) -> dict:
    hard = result["hard"]
    by_family = {}
    for fam in ("test", "solver_bench"):
        by_family[fam] = sum(r["hvps"] for r in result["ordinary"] if r["family"] == fam)
    return {
        "hard_within_bound": sum(r["gap"] <= BOUND for r in hard),
        "hard_total": len(hard),
        "hard_worst_gap": max(r["gap"] for r in hard),
        "hard_hvps": sum(r["hvps"] for r in hard),
        "ordinary_hvps": by_family,
    }


def compare(before: dict, after: dict, png: Path) -> str:
    sb, sa = summary(before), summary(after)
    lines = [
        "| | before | after |",
        "|---|---|---|",
        f"| hard cases within {BOUND:g} of m* | {sb['hard_within_bound']}/{sb['hard_total']} | "
        f"{sa['hard_within_bound']}/{sa['hard_total']} |",
        f"| worst hard-case gap | {sb['hard_worst_gap']:.2e} | {sa['hard_worst_gap']:.2e} |",
        f"| HVPs, hard cases | {sb['hard_hvps']} | {sa['hard_hvps']} |",
    ]
    for fam, label in (
        ("test", "ordinary: test family (120 solves)"),
        ("solver_bench", "ordinary: solver_bench"),
    ):
        b, a = sb["ordinary_hvps"][fam], sa["ordinary_hvps"][fam]
        lines.append(f"| HVPs, {label} | {b} | {a} ({100 * (a / b - 1):+.1f}%) |")
    lines += ["", "| solver_bench problem | M | HVPs before | after |", "|---|---|---|---|"]
    for rb, ra in zip(before["ordinary"], after["ordinary"], strict=True):
        if rb["family"] == "solver_bench":
            lines.append(f"| {rb['problem']} | {rb['M']:g} | {rb['hvps']} | {ra['hvps']} |")
    _plot(before, after, png)
    return "\n".join(lines)


def _plot(before: dict, after: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    ax = axes[0]
    floor = 1e-16
    for res, marker, label in ((before, "x", "before"), (after, "o", "after")):
        gaps = [max(r["gap"], floor) for r in res["hard"]]
        ax.semilogy(range(len(gaps)), gaps, marker, ms=5, mfc="none", label=label)
    ax.axhline(BOUND, color="k", ls="--", lw=1, label=f"bound {BOUND:g}")
    ax.set_xlabel("hard case (n 20 -> 400 left to right; within n: M 0.1..100, multiplicity, spectrum, seed)")
    ax.set_ylabel("(m(d) - m*) / |m*|   (floored at 1e-16)")
    ax.set_title("Exact hard cases at the defaults: model value above the global minimum")
    ax.legend(fontsize=8)
    ax = axes[1]
    ob = [r for r in before["ordinary"] if r["family"] == "solver_bench"]
    oa = [r for r in after["ordinary"] if r["family"] == "solver_bench"]
    x = np.arange(len(ob))
    ax.bar(x - 0.2, [r["hvps"] for r in ob], 0.4, label="before")
    ax.bar(x + 0.2, [r["hvps"] for r in oa], 0.4, label="after")
    names = [r["problem"].split(" (")[0].replace("spiked n=", "spiked\n").replace(" Hessian", "") for r in ob]
    ax.set_xticks(x, [f"{name}\nM={r['M']:g}" for name, r in zip(names, ob, strict=True)], fontsize=7)
    ax.set_ylabel("HVPs per solve (default tol)")
    ax.set_title("Ordinary problems (benchmarks/solver_bench.py): cost of the probe")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "hard_case_bench.json"))
    ap.add_argument("--label", default="after")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    a = ap.parse_args(argv)
    if a.compare:
        before, after = (json.loads(Path(p).read_text()) for p in a.compare)
        print(compare(before, after, Path(a.compare[1]).with_suffix(".png")))
        return 0
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    result = {
        "label": a.label,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.node()} {platform.machine()} cpus={os.cpu_count()}",
        "command": " ".join(["python", *sys.argv]),
        "hard": measure_hard(),
        "ordinary": measure_ordinary(),
    }
    result["summary"] = summary(result)
    result["seconds"] = time.perf_counter() - t0
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
