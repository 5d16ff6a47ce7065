"""``make demo`` = ``python -m dist_unlearn.demo``: the unlearn job on a model that memorised people.

1. Generate Q/A records about fictitious people (the package's word lists, seeded: the same on every
   machine), train a BPE tokenizer on them, fine-tune a small GPT-2 from a config until it has memorised
   them, save it with ``save_pretrained`` (cached in ``<out>/inputs``; delete the folder to rebuild).
2. Write ``<out>/job.yaml``: forget every record of a few people (``forget_ids.txt``), holdout = records of
   people the model never saw, split by person: half calibrate the stop rule, half are the audit's reference.
3. Run ``python -m dist_unlearn unlearn --config <out>/job.yaml`` with the job's default method
   (``match_unseen`` with the per-subject stop rule: a first-order method, so it runs in-process and the
   job says the workers were not used; ``--method cure_newton`` runs the curvature route on the 2 local Ray
   workers, ZeRO-3), which prints the per-subject table and the cost and writes ``<out>/unlearned/``
   (model, audit.json, audit.md, plots).
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from dist_unlearn.job.config import DEFAULT_METHOD

#: The demo's job names no method, so it runs the job's default (dist_unlearn.job.DEFAULT_METHOD): the
#: match_unseen objective with the per-subject stop rule. Measured on this demo and fresh cases in
#: benchmarks/RESULTS.md, "Does the job forget every subject of a request?" (per-subject tables, attacks,
#: probes, cost; CureNewton on the same objective and stop rule at equal cost).
DEMO_METHOD: dict = copy.deepcopy(DEFAULT_METHOD)

PEOPLE, HOLDOUT_PEOPLE, FORGET_PEOPLE, EPOCHS = 30, 16, 4, 80


def demo_job(inputs: Path, output_dir: Path, **extra: Any) -> dict[str, Any]:
    """The demo's job config (the job default method) over the inputs :func:`build_demo` wrote; ``extra``
    keys (workers, zero_stage, model, method, ...) are added or replace the defaults."""
    job: dict[str, Any] = {
        "model": str(inputs / "model"),
        "data": {
            "path": str(inputs / "train.jsonl"),
            "id_column": "id",
            "prompt_column": "question",
            "response_column": "answer",
            "prompt_template": "Question: {prompt}\nAnswer:",
            "max_length": 128,
            "subject_column": "person",
        },
        "holdout": str(inputs / "holdout.jsonl"),
        "holdout_split": {"calibration_fraction": 0.5, "group_column": "person"},
        "forget": {"ids_file": str(inputs / "forget_ids.txt")},
        "output_dir": str(output_dir),
        "training": {"epochs": EPOCHS},
    }
    job.update(extra)
    return job


def main(argv: list[str] | None = None) -> int:
    """Build the inputs (cached), write job.yaml, run the unlearn job; returns its exit code."""
    ap = argparse.ArgumentParser(prog="python -m dist_unlearn.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/unlearn_demo", help="demo folder (inputs/, job.yaml, unlearned/)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--zero-stage", type=int, default=3)
    ap.add_argument(
        "--method",
        default=None,
        help="a registered method instead of the job default, with the default's stop-rule settings (e.g. "
        "cure_newton: the curvature route on the workers)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the fine-tuning")
    ap.add_argument("-v", "--verbose", action="store_true", help="also the libraries' logs and progress bars")
    args = ap.parse_args(argv)
    from dist_unlearn.quiet import quiet_libraries

    quiet_libraries(verbose=args.verbose)
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
    extra: dict[str, Any] = {"workers": args.workers, "zero_stage": args.zero_stage}
    if args.method:
        stop = {k: v for k, v in DEFAULT_METHOD.items() if k in ("stop_within", "retain_tolerance")}
        extra["method"] = {"name": args.method, **stop}
    job = demo_job(inputs, out / "unlearned", **extra)
    job_path = out / "job.yaml"
    job_path.write_text(yaml.safe_dump(job, sort_keys=False))
    shown = job.get("method") or f"the job default {DEFAULT_METHOD} (dist_unlearn.job.DEFAULT_METHOD)"
    print(f"[demo] method: {shown}", flush=True)
    cmd = [sys.executable, "-m", "dist_unlearn", *(["-v"] if args.verbose else []), "unlearn"]
    cmd += ["--config", str(job_path), "--overwrite"]
    print(f"[demo] forgetting {FORGET_PEOPLE} people: {' '.join(['dist-unlearn', *cmd[3:]])}", flush=True)
    rc = subprocess.call(cmd)
    print(f"[demo] total {time.perf_counter() - t0:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
