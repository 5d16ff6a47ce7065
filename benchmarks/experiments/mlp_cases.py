"""Experiments on small MLPs built the way users train models (no download, a few minutes on 1 core).

    python benchmarks/experiments/mlp_cases.py --threads 1                 # every case
    python benchmarks/experiments/mlp_cases.py random10 --levers           # + the cheap-solve levers

Cases (synthetic 5-class data, 20 features, an MLP 20-32-5; retraining = the same recipe on the retain set):

- ``random10`` / ``class`` / ``flipped40``: trained to a stationary point of the L2-regularised loss
  (CE + 0.5 lambda |w|^2, lambda 1e-3; 400 full-batch Adam epochs + L-BFGS polish); forget a random 10%,
  every example of class 0, or 40 examples whose labels were flipped before training.
- ``memorised``: 600 examples with 40 flipped labels, MLP 20-128-5, no regularisation, trained to ~zero
  loss (1000 full-batch Adam epochs); forget the flipped ones.

Every method runs with ``unlearn()`` defaults (cure_newton variants as listed). Reported: accuracies, ToW vs
the retrained model, the oracle-free verdict (forget vs test per-example loss AUC and KS p, before / after,
``eval.verdict``), ``stats["cost"]`` in example passes as % of retraining's, wall time as % of retraining's.
Writes ``benchmarks/experiments/tables/mlp_cases.{md,json}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parents[2]
CASES = ["random10", "class", "flipped40", "memorised"]
BASELINES = ["finetune", "grad_ascent", "grad_diff", "npo", "scrub"]


CENTERS = 0.45 * torch.randn(5, 20, generator=torch.Generator().manual_seed(0))
"""Class means shared by every split (test accuracy of the trained MLPs ~0.85)."""


def make_data(n: int, seed: int, flip: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = CENTERS
    y = torch.randint(0, 5, (n,), generator=g)
    X = centers[y] + torch.randn(n, 20, generator=g)
    if flip:
        y = y.clone()
        y[:flip] = (y[:flip] + 1 + torch.randint(0, 4, (flip,), generator=g)) % 5
    return X, y


class RegularisedCE:
    """loss_fn(model, batch) = mean CE + 0.5 l2 |w|^2, with the per-example form NPO needs."""

    def __init__(self, l2: float):
        self.l2 = l2

    def _reg(self, model):
        return 0.5 * self.l2 * sum((p * p).sum() for p in model.parameters()) if self.l2 else 0.0

    def per_example(self, model, batch):
        x, y = batch
        return F.cross_entropy(model(x), y, reduction="none") + self._reg(model)

    def __call__(self, model, batch):
        x, y = batch
        return F.cross_entropy(model(x), y) + self._reg(model)


class Setting:
    def __init__(self, name: str):
        self.name = name
        self.l2 = 0.0 if name == "memorised" else 1e-3
        n = 600 if name == "memorised" else 1500
        flip = 40 if name in ("flipped40", "memorised") else 0
        self.X, self.y = make_data(n, seed=1, flip=flip)
        self.Xt, self.yt = make_data(1000, seed=2)
        self.hidden = 128 if name == "memorised" else 32
        self.epochs = 1000 if name == "memorised" else 400
        if name == "random10":
            forget = torch.randperm(n, generator=torch.Generator().manual_seed(3))[: n // 10]
        elif name == "class":
            forget = torch.nonzero(self.y == 0).reshape(-1)
        else:
            forget = torch.arange(flip)
        mask = torch.zeros(n, dtype=torch.bool)
        mask[forget] = True
        self.retain = TensorDataset(self.X[~mask], self.y[~mask])
        self.forget = TensorDataset(self.X[mask], self.y[mask])
        self.test = TensorDataset(self.Xt, self.yt)

        self.loss_fn = RegularisedCE(self.l2)

    def build(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(20, self.hidden), nn.Tanh(), nn.Linear(self.hidden, 5))

    def train(self, data: TensorDataset) -> tuple[nn.Module, float, float]:
        """(model, example passes, wall s): full-batch Adam, then L-BFGS to a stationary point when L2."""
        model = self.build()
        X, y = data.tensors
        t0 = time.perf_counter()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(self.epochs):
            opt.zero_grad()
            self.loss_fn(model, (X, y)).backward()
            opt.step()
        evals = self.epochs
        if self.l2:
            lb = torch.optim.LBFGS(model.parameters(), max_iter=300, tolerance_grad=1e-9, tolerance_change=0,
                                   line_search_fn="strong_wolfe")  # fmt: skip
            count = [0]

            def closure():
                count[0] += 1
                lb.zero_grad()
                loss = self.loss_fn(model, (X, y))
                loss.backward()
                return loss

            lb.step(closure)
            evals += count[0]
        return model.eval(), float(evals * len(X)), time.perf_counter() - t0


def per_example(model, data):
    X, y = data.tensors
    with torch.no_grad():
        out = model(X)
        return F.cross_entropy(out, y, reduction="none").numpy(), float((out.argmax(1) == y).float().mean())


def evaluate(s: Setting, model, oracle_acc=None):
    from dist_unlearn.eval.classification import tug_of_war
    from dist_unlearn.eval.verdict import loss_evidence

    acc, losses = {}, {}
    for split, data in (("retain", s.retain), ("forget", s.forget), ("test", s.test)):
        losses[split], acc[split] = per_example(model, data)
    ev = loss_evidence(losses["forget"], losses["test"])
    out = {"acc": acc, "evidence": ev}
    if oracle_acc is not None:
        out["tow"] = tug_of_war(acc, oracle_acc)
    return out


def measure(s: Setting, original, method: str, opts: dict, ev_orig: dict, ev_oracle: dict):
    """Unlearn a copy of ``original`` with one method and judge it against the original and the retrained
    model: (UnlearnResult, evaluation with its verdict, wall seconds of the unlearn call)."""
    from dist_unlearn import unlearn
    from dist_unlearn.eval.verdict import decide

    model = copy.deepcopy(original)
    t0 = time.perf_counter()
    res = unlearn(model, s.loss_fn, s.retain, s.forget, method=method, **opts)
    wall = time.perf_counter() - t0
    ev = evaluate(s, res.model, ev_oracle["acc"])
    ev["verdict"] = decide(ev["evidence"], before=ev_orig["evidence"], reference=ev_oracle["evidence"])
    return res, ev, wall


def budget_variants() -> list[tuple[str, str, dict]]:
    """cure_newton with smaller per-solve HVP budgets / fewer steps / FD HVPs (what ToW the cost buys)."""
    runs = [
        ("B budget 10", {"krylov_max_iter": 10}),
        ("B budget 5", {"krylov_max_iter": 5}),
        ("B budget 10, 5 steps", {"krylov_max_iter": 10, "max_steps": 5}),
        ("B budget 3", {"krylov_max_iter": 3}),
        ("B fd, budget 10", {"hvp": "fd", "krylov_max_iter": 10}),
    ]
    return [(label, "cure_newton", {**opts, "batch_size": 4096}) for label, opts in runs]


def run_case(name: str, levers: bool, budgets: bool = False) -> dict:

    s = Setting(name)
    original, orig_passes, orig_wall = s.train(TensorDataset(s.X, s.y))
    oracle, re_passes, re_wall = s.train(s.retain)
    ev_orig = evaluate(s, original)
    ev_oracle = evaluate(s, oracle)
    rows = {
        "original": {**evaluate(s, original, ev_oracle["acc"]), "passes": orig_passes, "wall": orig_wall},
        "retrain": {**ev_oracle, "tow": 1.0, "passes": re_passes, "wall": re_wall},
    }
    full = {"batch_size": 4096}  # one chunk per oracle pass (the data are tiny); passes do not change
    variants = [("cure_newton", "cure_newton", full)]
    if s.l2:
        variants.append(("cure_newton (influence)", "cure_newton", {**full, "gradient": "influence"}))
    variants += [
        ("cure_newton (npo)", "cure_newton", {**full, "objective": "npo"}),
        ("cure_newton (grad_diff)", "cure_newton", {**full, "objective": "grad_diff", "max_steps": 3}),
    ]
    variants += [(b, b, {}) for b in BASELINES]
    if levers:
        variants += lever_variants()
    if budgets:
        variants = variants[:1] + budget_variants()
    for label, method, opts in variants:
        res, ev, wall = measure(s, original, method, opts, ev_orig, ev_oracle)
        st = res.stats
        rows[label] = {
            **ev,
            "passes": st["cost"]["example_passes"],
            "wall": wall,
            "hvps": st.get("total_hvps"),
            "steps": st.get("num_steps"),
            "accepted": st.get("accepted_steps"),
            "stop": st.get("stop_reason"),
            "cost": st["cost"],
            "options": opts,
        }
        print(f"  {name}: {label}: ToW {ev['tow']:.3f} passes {100 * rows[label]['passes'] / re_passes:.1f}% "
              f"wall {100 * wall / re_wall:.0f}% stop {st.get('stop_reason')}", flush=True)  # fmt: skip
    return {"case": name, "n_retain": len(s.retain), "n_forget": len(s.forget), "rows": rows}


def lever_variants() -> list[tuple[str, str, dict]]:
    """The cheap-solve levers added one at a time, from full-batch solves without them to today's defaults."""
    old = {"first_M_tries": 1, "krylov_tol": 1e-6, "krylov_max_iter": 100, "hvp_sample": "all", "tol": 1e-6,
           "max_steps": 20}  # fmt: skip
    steps = [
        ("L0 old defaults", old),
        ("L1 +forcing tol", {k: v for k, v in old.items() if k != "krylov_tol"}),
        ("L2 +HVP budget 30", {k: v for k, v in old.items() if k not in ("krylov_tol", "krylov_max_iter")}),
        ("L3 +first-M search", {"hvp_sample": "all", "tol": 1e-6, "max_steps": 20}),
        ("L4 +sub-sampled HVP", {"tol": 1e-6, "max_steps": 20}),
        ("L5 +stop rules (= defaults)", {}),
    ]
    return [(label, "cure_newton", {**opts, "batch_size": 4096}) for label, opts in steps]


def table(result: dict) -> str:
    rows = result["rows"]
    re_p, re_w = rows["retrain"]["passes"], rows["retrain"]["wall"]
    head = ["method", "ToW", "acc retain", "acc forget", "acc test", "AUC f/test", "KS p", "verdict",
            "passes % retrain", "wall % retrain", "HVPs", "steps", "stop"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, r in rows.items():
        ev, acc = r["evidence"], r["acc"]
        ks = ev.get("ks_pvalue")
        cells = [
            f"*{label}*" if label in ("original", "retrain") else label,
            f"{r.get('tow', float('nan')):.3f}",
            f"{acc['retain']:.3f}", f"{acc['forget']:.3f}", f"{acc['test']:.3f}",
            f"{ev['forget_vs_unseen_auc']:.3f}", "-" if ks is None else f"{ks:.2g}",
            r.get("verdict", {}).get("status", "-"),
            f"{100 * r['passes'] / re_p:.1f}", f"{100 * r['wall'] / re_w:.0f}",
            str(r.get("hvps", "-")), str(r.get("accepted", "-")), str(r.get("stop", "-")),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="*", default=CASES)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--levers", action="store_true", help="also run the cheap-solve levers one by one")
    ap.add_argument("--budget-sweep", action="store_true", help="only cure_newton at smaller HVP budgets")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out_dir = ROOT / "benchmarks" / "experiments" / "tables"
    out_dir.mkdir(parents=True, exist_ok=True)
    results, text = [], []
    stamp = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()} CPU, torch threads {args.threads}"
    cmd = "python benchmarks/experiments/mlp_cases.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for name in args.cases:
        t0 = time.perf_counter()
        res = run_case(name, args.levers, args.budget_sweep)
        results.append(res)
        text += [f"#### {name} (n_retain {res['n_retain']}, n_forget {res['n_forget']}; "
                 f"{time.perf_counter() - t0:.0f} s)", "", table(res), ""]  # fmt: skip
        print(text[-2], flush=True)
    header = [f"{stamp}. Command: `{cmd.strip()}`.", ""]
    tag = (
        "_".join(args.cases) + ("_levers" if args.levers else "") + ("_budgets" if args.budget_sweep else "")
    )
    tmp = out_dir / f".mlp_cases_{tag}.md.tmp"
    tmp.write_text("\n".join(header + text) + "\n")
    tmp.replace(out_dir / f"mlp_cases_{tag}.md")
    tmp = out_dir / f".mlp_cases_{tag}.json.tmp"
    tmp.write_text(json.dumps(results, indent=1, default=float))
    tmp.replace(out_dir / f"mlp_cases_{tag}.json")


if __name__ == "__main__":
    main()
