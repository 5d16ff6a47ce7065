"""Does the demo's forgetting survive a retain-only fine-tune? (issue 8 follow-up: the retain-loss bound)

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

from dist_unlearn.job import run_job
from dist_unlearn.job.config import DEFAULT_METHOD

KEYS = ("forget_loss", "retain_loss", "holdout_loss", "forget_vs_holdout_auc")


def job(inputs: Path, model: Path, method: dict, out: Path) -> dict:
    """The demo's job dict (as dist_unlearn.demo writes it) with another model and method."""
    return {
        "model": str(model),
        "data": {
            "path": str(inputs / "train.jsonl"),
            "id_column": "id",
            "prompt_column": "question",
            "response_column": "answer",
            "prompt_template": "Question: {prompt}\nAnswer:",
            "max_length": 128,
        },
        "holdout": str(inputs / "holdout.jsonl"),
        "holdout_split": {"calibration_fraction": 0.5, "group_column": "person"},
        "forget": {"ids_file": str(inputs / "forget_ids.txt")},
        "method": method,
        "output_dir": str(out),
    }


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
        run_job(job(args.inputs, args.inputs / "model", dict(DEFAULT_METHOD), first), log=quiet),
    )
    for epochs, lr in ((1, 1e-4), (2, 3e-4), (3, 1e-3)):
        method = {"name": "finetune", "epochs": epochs, "lr": lr, "batch_size": 8}
        out = args.out / f"finetune_{epochs}_{lr:g}"
        show(
            f"then retain-only finetune {epochs} epochs lr {lr:g}",
            run_job(job(args.inputs, first / "model", method, out), log=quiet),
        )


if __name__ == "__main__":
    main()
