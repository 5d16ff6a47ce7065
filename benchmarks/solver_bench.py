"""Solver benchmark: Krylov cubic solver vs gradient descent, and the Krylov solver's overhead.

Problems
  * spiked-spectrum matrix-free H of dimension 1e3..1e5: H = D + V diag(s) V^T with V (n x 10) orthonormal,
    s in [50, 200] (a few large positive eigenvalues), D diagonal with a bulk near zero (|N(0, 1e-3)|) and 5%
    small negative entries (-U(1e-3, 5e-2)); g = V a + 0.1 * noise (a gradient mostly in the top directions).
  * the Hessian of a small MLP (64-32-10, tanh, float64) trained on sklearn's load_digits, at the trained
    weights, for the retain loss after dropping a random 5% forget set (the unlearning step CureNewton makes);
    H v by double backward (forward + backward + backward of <grad, v> on the full retain set per product),
    vectors are tuples of per-parameter tensors, as the curvature oracles hand them to the solver.

Measured
  * HVPs until the model value m(d) is within 1e-6 (relative) of the reference minimum m* (a Krylov solve at
    tol 1e-12), for the Krylov solver (reorthogonalised Lanczos; the model value of every Krylov iterate comes
    free from the tridiagonal solve) and for gradient descent on the cubic model (Carmon-Duchi step size; its
    Lanczos norm estimate and Cauchy-point products are counted).
  * the solver's own overhead, 1 - (time inside matvec)/(total time), with the default stopping rule
    (tol 1e-6): on the MLP (the matvec IS a small model's HVP) and on n = 1e4 spiked problems whose matvec is
    padded (busy wait) to cost what the MLP's HVP costs.

Run:  python benchmarks/solver_bench.py [--quick] [--out benchmarks/results/solver_bench.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dist_unlearn.linalg import TensorSpace  # noqa: E402
from dist_unlearn.solvers import cubic_gradient_descent, cubic_subproblem  # noqa: E402

ACCURACY = 1e-6


class BatchedTensorSpace(TensorSpace):
    """TensorSpace plus the optional batched ops the solvers use when present (``dots``, ``lincomb``).

    One stacked matrix product per parameter tensor instead of one dot/axpy per basis vector: what the
    reorthogonalisation and d = Q y need. (Proposed for dist_unlearn.linalg.TensorSpace.)
    """

    @staticmethod
    def _split(x):
        return (x,) if isinstance(x, torch.Tensor) else tuple(x)

    def dots(self, x, ys):
        total = torch.zeros(len(ys), dtype=torch.float64)
        for i, part in enumerate(self._split(x)):
            stacked = torch.stack([self._split(y)[i].reshape(-1) for y in ys]).double()
            total += stacked @ part.reshape(-1).double()
        return total.tolist()

    def lincomb(self, coeffs, vectors):
        c = torch.tensor(coeffs, dtype=torch.float64)
        parts = []
        for i, ref in enumerate(self._split(vectors[0])):
            stacked = torch.stack([self._split(v)[i] for v in vectors])
            parts.append(torch.tensordot(c.to(ref.dtype), stacked, dims=1))
        return parts[0] if isinstance(vectors[0], torch.Tensor) else tuple(parts)


def spiked_problem(n: int, seed: int, rank: int = 10):
    """Matrix-free spiked H (float64) and a gradient-like g."""
    gen = torch.Generator().manual_seed(seed)
    V, _ = torch.linalg.qr(torch.randn(n, rank, generator=gen, dtype=torch.float64))
    s = 50.0 + 150.0 * torch.rand(rank, generator=gen, dtype=torch.float64)
    diag = torch.randn(n, generator=gen, dtype=torch.float64).abs() * 1e-3
    neg = torch.rand(n, generator=gen) < 0.05
    diag[neg] = -(1e-3 + 4.9e-2 * torch.rand(int(neg.sum()), generator=gen, dtype=torch.float64))

    def matvec(v: torch.Tensor) -> torch.Tensor:
        return diag * v + V @ (s * (V.T @ v))

    g = V @ torch.randn(rank, generator=gen, dtype=torch.float64)
    g += 0.1 * torch.randn(n, generator=gen, dtype=torch.float64) * g.norm() / math.sqrt(n)
    return matvec, g


def mlp_problem(seed: int = 0, hidden: int = 32, forget_fraction: float = 0.05, steps: int = 400):
    """Train a tiny MLP on load_digits; return (hvp, g, info) for the retain loss at the trained weights."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float64)
    y = torch.tensor(y)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 10)
    ).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(X), y) + 1e-4 * sum(
            (p * p).sum() for p in model.parameters()
        )
        loss.backward()
        opt.step()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    retain = perm[int(forget_fraction * len(y)) :]
    Xr, yr = X[retain], y[retain]
    params = list(model.parameters())

    def loss_fn() -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(Xr), yr) + 1e-4 * sum((p * p).sum() for p in params)

    def hvp(v: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
        return torch.autograd.grad(grads, params, grad_outputs=v)

    g = tuple(t.detach() for t in torch.autograd.grad(loss_fn(), params))
    with torch.no_grad():
        acc = float((model(X).argmax(1) == y).float().mean())
    info = {"params": sum(p.numel() for p in params), "train_accuracy": acc, "retain_examples": len(retain)}
    return hvp, g, info


def first_reaching(history: list[tuple[int, float]], m_ref: float, acc: float = ACCURACY) -> int | None:
    """HVPs after which the model value is within acc (relative) of m_ref, or None."""
    for hvps, m in history:
        if abs(m - m_ref) <= acc * abs(m_ref):
            return hvps
    return None


def compare(name: str, matvec, g, M: float, gd_cap: int, space=None) -> dict:
    """Krylov vs GD HVPs to 1e-6 relative model accuracy on one problem."""
    ref = cubic_subproblem(matvec, g, M, tol=1e-12, max_iter=400, space=space)
    m_ref = ref.model_value
    krylov = cubic_subproblem(matvec, g, M, tol=1e-12, max_iter=400, space=space, callback=lambda h, m: None)
    default = cubic_subproblem(matvec, g, M, space=space)  # tol 1e-6: what a user gets
    gd_hist: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    gd = cubic_gradient_descent(
        matvec, g, M, tol=1e-12, max_iter=gd_cap, space=space, callback=lambda h, m: gd_hist.append((h, m))
    )
    gd_time = time.perf_counter() - t0
    k_hvps = first_reaching(krylov.history, m_ref)
    gd_hvps = first_reaching(gd_hist, m_ref)
    return {
        "problem": name,
        "M": M,
        "model_ref": m_ref,
        "ref_converged": ref.converged,
        "lambda": ref.multiplier,
        "step_norm": ref.step_norm,
        "krylov_hvps": k_hvps,
        "gd_hvps": gd_hvps,
        "gd_hvps_lower_bound": gd_hvps if gd_hvps is not None else gd.hvps,
        "gd_reached": gd_hvps is not None,
        "ratio": (gd_hvps if gd_hvps is not None else gd.hvps) / k_hvps if k_hvps else None,
        "default_tol_hvps": default.hvps,
        "default_tol_model_rel_err": abs(default.model_value - m_ref) / abs(m_ref),
        "default_tol_overhead": default.overhead_fraction,
        "gd_seconds": gd_time,
        "krylov_seconds": default.solver_time,
    }


def padded(matvec, seconds: float):
    """matvec that costs at least ``seconds`` (busy wait: the CPU stays as busy as under a real HVP)."""

    def slow(v):
        start = time.perf_counter()
        out = matvec(v)
        while time.perf_counter() - start < seconds:
            pass
        return out

    return slow


def overhead(matvec, g, M: float, repeats: int, space=None, **kw) -> dict:
    """Median over repeats of the default-tol solve's overhead fraction, by wall clock and by CPU time.

    On a shared machine the wall clock also counts time spent waiting for a core; the CPU-time fraction
    (process_time inside matvec vs the whole solve) is the load-independent measure of the same thing.
    """
    cpu_in = [0.0]

    def timed(v):
        t = time.process_time()
        out = matvec(v)
        cpu_in[0] += time.process_time() - t
        return out

    fracs, cpu_fracs, its, totals = [], [], [], []
    cubic_subproblem(timed, g, M, space=space, **kw)  # warm-up (imports, LAPACK, allocator)
    for _ in range(repeats):
        cpu_in[0] = 0.0
        c0 = time.process_time()
        res = cubic_subproblem(timed, g, M, space=space, **kw)
        cpu_total = time.process_time() - c0
        fracs.append(res.overhead_fraction)
        cpu_fracs.append(max(0.0, 1.0 - cpu_in[0] / cpu_total))
        its.append(res.iterations)
        totals.append(res.solver_time)
    i = int(np.argsort(fracs)[len(fracs) // 2])
    return {
        "overhead_fraction": fracs[i],
        "overhead_fraction_cpu": float(np.median(cpu_fracs)),
        "iterations": its[i],
        "solver_seconds": totals[i],
        "overhead_ms_per_iteration": 1e3 * fracs[i] * totals[i] / max(its[i], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="dims 1e3, 1e4 only; fewer repeats and a smaller GD cap"
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "solver_bench.json"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dims = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    gd_cap = 3_000 if args.quick else 20_000
    repeats = 3 if args.quick else 5
    rows = []
    for n in dims:
        matvec, g = spiked_problem(n, seed=n)
        for M in (1.0, 0.01):
            rows.append(compare(f"spiked n={n:.0e}", matvec, g, M, gd_cap))
            print(_row_text(rows[-1]), flush=True)
    hvp, g, info = mlp_problem()
    space = TensorSpace()
    for M in (1.0, 0.1):
        rows.append(compare(f"MLP Hessian ({info['params']} params)", hvp, g, M, gd_cap, space=space))
        print(_row_text(rows[-1]), flush=True)

    # overhead: on the MLP itself, and on spiked n=1e4 with the matvec padded to the MLP's HVP cost
    t0 = time.perf_counter()
    v = tuple(torch.randn_like(t) for t in g)
    for _ in range(10):
        hvp(v)
    hvp_seconds = (time.perf_counter() - t0) / 10
    over = {"mlp_hvp_ms": 1e3 * hvp_seconds}
    over["mlp_reorth"] = overhead(hvp, g, 1.0, repeats, space=space)
    over["mlp_no_reorth"] = overhead(hvp, g, 1.0, repeats, space=space, reorthogonalize=False)
    over["mlp_reorth_batched"] = overhead(hvp, g, 1.0, repeats, space=BatchedTensorSpace())
    # a "small" (not tiny) model: the same MLP with 512 hidden units (~38k parameters)
    hvp_s, g_s, info_s = mlp_problem(hidden=512, steps=150)
    t0 = time.perf_counter()
    v = tuple(torch.randn_like(t) for t in g_s)
    for _ in range(5):
        hvp_s(v)
    over["mlp512_hvp_ms"] = 1e3 * (time.perf_counter() - t0) / 5
    over["mlp512_params"] = info_s["params"]
    over["mlp512_reorth"] = overhead(hvp_s, g_s, 1.0, repeats, space=space)
    over["mlp512_no_reorth"] = overhead(hvp_s, g_s, 1.0, repeats, space=space, reorthogonalize=False)
    mv, gs = spiked_problem(10_000, seed=10_000)
    slow = padded(mv, hvp_seconds)
    over["spiked_1e4_padded_reorth"] = overhead(slow, gs, 1.0, repeats)
    over["spiked_1e4_padded_no_reorth"] = overhead(slow, gs, 1.0, repeats, reorthogonalize=False)

    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()}-core CPU, torch {torch.__version__}, "
        f"{args.threads} torch thread(s), load avg {os.getloadavg()[0]:.1f}",
        "command": "python benchmarks/solver_bench.py" + (" --quick" if args.quick else ""),
        "accuracy": ACCURACY,
        "mlp": info,
        "comparison": rows,
        "overhead": over,
    }
    print()
    print(render_table(result))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    print(f"\nwrote {out}")


def _row_text(r: dict) -> str:
    return (
        f"{r['problem']:<28} M={r['M']:<5g} krylov={r['krylov_hvps']} gd={r['gd_hvps_lower_bound']}"
        f"{'' if r['gd_reached'] else '+'} ({r['gd_seconds']:.1f}s)"
    )


def render_table(result: dict) -> str:
    lines = [
        f"HVPs to reach {result['accuracy']:.0e} relative accuracy in the cubic model value",
        "| problem | M | lambda | Krylov HVPs | GD HVPs | GD/Krylov | HVPs at tol=1e-6 (rel. err) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["comparison"]:
        gd = f"{r['gd_hvps_lower_bound']}" + ("" if r["gd_reached"] else " (not reached)")
        ratio = "n/a" if r["ratio"] is None else f"{'>' if not r['gd_reached'] else ''}{r['ratio']:.1f}x"
        lines.append(
            f"| {r['problem']} | {r['M']:g} | {r['lambda']:.3g} | {r['krylov_hvps']} | {gd} | {ratio} | "
            f"{r['default_tol_hvps']} ({r['default_tol_model_rel_err']:.1e}) |"
        )
    o = result["overhead"]
    lines += [
        "",
        f"Solver overhead (outside matvec / total, tol 1e-6); 64-32-10 MLP HVP {o['mlp_hvp_ms']:.2f} ms",
        "| setting | iterations | overhead (wall) | overhead (CPU time) | wall ms/iteration outside matvec |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, label in [
        ("mlp_reorth", "MLP Hessian, reorthogonalize=True"),
        ("mlp_no_reorth", "MLP Hessian, reorthogonalize=False"),
        ("mlp_reorth_batched", "MLP Hessian, reorth, space with dots/lincomb"),
        (
            "mlp512_reorth",
            f"MLP 64-512-10 ({o['mlp512_params']} params, HVP {o['mlp512_hvp_ms']:.0f} ms), reorth",
        ),
        ("mlp512_no_reorth", "MLP 64-512-10, reorthogonalize=False"),
        ("spiked_1e4_padded_reorth", "spiked n=1e4, matvec padded to MLP HVP, reorth"),
        ("spiked_1e4_padded_no_reorth", "spiked n=1e4, matvec padded to MLP HVP, no reorth"),
    ]:
        e = o[key]
        lines.append(
            f"| {label} | {e['iterations']} | {100 * e['overhead_fraction']:.2f}% | "
            f"{100 * e['overhead_fraction_cpu']:.2f}% | "
            f"{e['overhead_ms_per_iteration']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
