"""Does the demo's forgetting survive a retain-only fine-tune? (the retain-loss bound and relearning)

Runs the unlearn job with its default method on the demo's inputs, then fine-tunes the unlearned model on the
retain rows only (the job with ``method: finetune``; the forget rows are never read) for a few settings, and
prints the evidence before/after each. A model that *forgot* stays at forget/holdout AUC ~0.5 (the retrained
model never saw those rows, so retain-only training cannot teach them); a model whose answers were only
suppressed relearns them.

    python benchmarks/experiments/relearn_after_forgetting.py \
        --inputs runs/unlearn_demo/inputs --out /tmp/relearn

``--inputs``: the demo's input folder (``python -m dist_unlearn.demo`` writes it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dist_unlearn.demo.__main__ import demo_job
from dist_unlearn.job import run_job
from dist_unlearn.job.config import DEFAULT_METHOD

KEYS = ("forget_loss", "retain_loss", "holdout_loss", "forget_vs_holdout_auc")


def show(tag: str, res) -> None:
    ev = res.audit["evidence"]
    cells = ", ".join(f"{k} {ev['before'][k]:.4f} -> {ev['after'][k]:.4f}" for k in KEYS)
    passes = res.audit["run"].get("cost", {}).get("example_passes")
    print(f"{tag}: {cells}; status {res.verdict['status']}; example passes {passes}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="a new folder for the runs' outputs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    quiet = lambda m: None  # noqa: E731
    first = args.out / "default"
    show(
        "default method",
        run_job(demo_job(args.inputs, first, method=dict(DEFAULT_METHOD)), log=quiet),
    )
    for epochs, lr in ((1, 1e-4), (2, 3e-4), (3, 1e-3)):
        method = {"name": "finetune", "epochs": epochs, "lr": lr, "batch_size": 8}
        out = args.out / f"finetune_{epochs}_{lr:g}"
        show(
            f"then retain-only finetune {epochs} epochs lr {lr:g}",
            run_job(demo_job(args.inputs, out, model=str(first / "model"), method=method), log=quiet),
        )


if __name__ == "__main__":
    main()
