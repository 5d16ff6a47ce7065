"""Run the paper experiments and write their tables.

    python benchmarks/experiments/run_experiments.py                      # all of them
    python benchmarks/experiments/run_experiments.py digits_sample digits_class --threads 1

Each name is a config in configs/experiments/ (digits_sample, digits_class, digits_sequential,
minilm_sentiment, minilm_sentiment_class, tofu_gpt2, tofu_gpt2_lora). Outputs go to runs/<name>/
(results.json, report.md, models); the markdown tables to benchmarks/experiments/tables/<name>.md, the
JSON summary next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALL = [
    "digits_sample",
    "digits_class",
    "digits_sequential",
    "minilm_sentiment",
    "minilm_sentiment_class",
    "tofu_gpt2",
    "tofu_gpt2_lora",
]

CLS_COLS = [
    ("tow", "ToW", ".3f"),
    ("acc_retain", "acc retain", ".3f"),
    ("acc_forget", "acc forget", ".3f"),
    ("acc_test", "acc test", ".3f"),
    ("js_forget", "JS forget", ".4f"),
    ("mia_auc", "MIA AUC", ".3f"),
]
LM_COLS = [
    ("forget_quality", "forget quality", ".3g"),
    ("model_utility", "model utility", ".3f"),
    ("forget_ppl", "forget ppl", ".2f"),
    ("retain_ppl", "retain ppl", ".2f"),
    ("forget_Q_A_ROUGE", "forget ROUGE", ".3f"),
    ("mia_min_k", "MIA MinK", ".3f"),
]
COMMON = [("update_norm", "update norm", ".2e")]


def _f(x, spec):
    return "-" if x is None else format(x, spec) if isinstance(x, int | float) else str(x)


def table(results: dict) -> str:
    """Markdown table: one row per method (original / retrain first)."""
    lm = results["experiment"]["kind"] == "causal_lm"
    cols = (LM_COLS if lm else CLS_COLS) + COMMON
    head = ["method", *[c[1] for c in cols], "steps", "HVPs", "passes % retrain", "wall s", "wall % retrain"]
    from dist_unlearn.cost import percent_of

    retrain_cost = (results["methods"].get("retrain", {}).get("resources") or {}).get("cost")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rec in results["methods"].items():
        m, st, res = rec["metrics"], rec.get("stats") or {}, rec.get("resources") or {}
        ref = name in ("original", "retrain")
        wall = m.get("time_fraction_of_retrain")
        cost = (res.get("cost") if name in ("original", "retrain") else st.get("cost")) or None
        passes = percent_of(cost, retrain_cost)
        row = [
            f"*{name}*" if ref else name,
            *[_f(m.get(k), s) for k, _, s in cols],
            "-" if ref else str(len(rec.get("steps") or [])),
            _f(st.get("total_hvps"), "d"),
            _f(passes, ".1f"),
            _f(res.get("wall_time_s"), ".1f"),
            "-" if name == "original" or wall is None else f"{100 * wall:.1f}",
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def rounds_table(results: dict, metric: str = "tow") -> str:
    """Sequential runs: the metric per method per round."""
    rounds = results.get("rounds") or []
    if not rounds:
        return ""
    names = [n for n in rounds[0]["methods"] if n != "original"]
    lines = ["| round | n forgotten | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
    for r in rounds:
        vals = [_f(r["methods"][n]["metrics"].get(metric), ".3f") for n in names]
        lines.append(f"| {r['round'] + 1} | {r['n_forgotten']} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", default=ALL)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out-root", default=str(ROOT / "runs"))
    ap.add_argument(
        "--overwrite", action="store_true", help="replace what an earlier run of the experiment wrote there"
    )
    args = ap.parse_args(argv)
    for k, v in {"DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(k, v)
    import torch

    from dist_unlearn.config import load_config
    from dist_unlearn.pipeline import run_experiment

    if args.threads:
        torch.set_num_threads(args.threads)
    tables = ROOT / "benchmarks" / "experiments" / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        cfg_path = ROOT / "configs" / "experiments" / f"{name}.yaml"
        cfg = load_config(cfg_path)
        t0 = time.perf_counter()
        results = run_experiment(cfg, out_dir=Path(args.out_root) / name, overwrite=args.overwrite)
        total = time.perf_counter() - t0
        exp = results["experiment"]
        text = [
            f"### {name} ({exp['task']}, {exp['level']}-level"
            + (f", {exp['rounds']} rounds" if exp["rounds"] > 1 else "")
            + ")",
            "",
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()} CPU, torch threads "
            f"{torch.get_num_threads()}, whole run {total:.0f} s. "
            f"Command: `python benchmarks/experiments/run_experiments.py {name}"
            + (f" --threads {args.threads}" if args.threads else "")
            + f"` (= `dist-unlearn run --config "
            f"configs/experiments/{name}.yaml`). n_train={exp['n_train']}, "
            f"forgotten={exp['n_forget_total']}, n_test={exp['n_test']}.",
            "",
            table(results),
        ]
        seq = rounds_table(results)
        if seq:
            text += ["", "ToW per round (each method continues from its previous-round model):", "", seq]
        (tables / f"{name}.md").write_text("\n".join(text) + "\n")
        (tables / f"{name}.json").write_text(
            json.dumps(
                {
                    k: {
                        "metrics": v["metrics"],
                        "resources": v.get("resources"),
                        "total_hvps": (v.get("stats") or {}).get("total_hvps"),
                    }
                    for k, v in results["methods"].items()
                },
                indent=1,
            )
        )
        print("\n".join(text), flush=True)


if __name__ == "__main__":
    sys.exit(main())
