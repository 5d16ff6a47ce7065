"""``make demo`` = ``python -m dist_unlearn.demo``: the unlearn job on a model that memorised people.

1. Generate Q/A records about fictitious people (faker, seeded), train a BPE tokenizer on them, fine-tune a
   small GPT-2 from a config until it has memorised them, save it with ``save_pretrained`` (cached in
   ``<out>/inputs``; delete the folder to rebuild).
2. Write ``<out>/job.yaml``: forget every record of a few people (``forget_ids.txt``), holdout = records of
   people the model never saw.
3. Run ``python -m dist_unlearn unlearn --config <out>/job.yaml`` (2 local Ray workers, ZeRO-3, when the
   method is a curvature method), which prints the verdict table and the cost and writes
   ``<out>/unlearned/`` (model, audit.json, audit.md, plot).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

#: The method the demo's job uses. Measured on this demo (benchmarks/RESULTS.md, "unlearn job demo"):
#: cure_newton on the retain loss alone leaves memorised rows memorised (AUC 1.0 before and after), NPO with a
#: retain term brings the forget rows to the holdout's loss level. Switch here when a curvature objective
#: that forgets memorised rows is available (it then runs on the workers).
DEMO_METHOD: dict = {"name": "npo", "epochs": 12, "lr": 5e-4, "retain_weight": 5.0, "batch_size": 8}

PEOPLE, HOLDOUT_PEOPLE, FORGET_PEOPLE, EPOCHS = 30, 16, 4, 80


def main(argv: list[str] | None = None) -> int:
    """Build the inputs (cached), write job.yaml, run the unlearn job; returns its exit code."""
    ap = argparse.ArgumentParser(prog="python -m dist_unlearn.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/unlearn_demo", help="demo folder (inputs/, job.yaml, unlearned/)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--zero-stage", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the fine-tuning")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    inputs = out / "inputs"
    t0 = time.perf_counter()
    if not (inputs / "model" / "config.json").is_file():
        from dist_unlearn.demo.people import build_demo

        print(f"[demo] building the inputs in {inputs}/ (fictitious people, tokenizer, fine-tuned GPT-2)")
        build_demo(
            inputs,
            n_people=PEOPLE,
            n_holdout=HOLDOUT_PEOPLE,
            n_forget=FORGET_PEOPLE,
            epochs=EPOCHS,
            log=lambda m: print(f"[demo] {m}", flush=True),
        )
        print(f"[demo] inputs ready in {time.perf_counter() - t0:.0f} s")
    else:
        print(f"[demo] reusing the inputs in {inputs}/ (delete it to rebuild)")
    job = {
        "model": str(inputs / "model"),
        "data": {
            "path": str(inputs / "train.jsonl"),
            "id_column": "id",
            "prompt_column": "question",
            "response_column": "answer",
            "prompt_template": "Question: {prompt}\nAnswer:",
            "max_length": 128,
        },
        "holdout": str(inputs / "holdout.jsonl"),
        "forget": {"ids_file": str(inputs / "forget_ids.txt")},
        "method": DEMO_METHOD,
        "workers": args.workers,
        "zero_stage": args.zero_stage,
        "output_dir": str(out / "unlearned"),
    }
    job_path = out / "job.yaml"
    job_path.write_text(yaml.safe_dump(job, sort_keys=False))
    cmd = [sys.executable, "-m", "dist_unlearn", "unlearn", "--config", str(job_path), "--overwrite"]
    print(f"[demo] forgetting {FORGET_PEOPLE} people: {' '.join(['dist-unlearn', *cmd[3:]])}", flush=True)
    rc = subprocess.call(cmd)
    print(f"[demo] total {time.perf_counter() - t0:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
