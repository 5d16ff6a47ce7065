"""The demo's inputs as a benchmark case: ``python -m dist_unlearn.demo``'s model and data, plus the model
retrained without the 4 people (the same recipe on the retained rows) and a ``case.json``.

    python benchmarks/cases/demo_case.py --out /tmp/cases        # writes /tmp/cases/demo
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit_reference import retrain  # noqa: E402

from dist_unlearn.demo.__main__ import EPOCHS, FORGET_PEOPLE, HOLDOUT_PEOPLE, PEOPLE  # noqa: E402
from dist_unlearn.demo.people import QA_TEMPLATE, build_demo  # noqa: E402


def build_case(root: Path) -> Path:
    """Build (or reuse) ``root/demo``: the demo's inputs, ``retrained/`` and ``case.json``."""
    folder = root / "demo"
    if (folder / "case.json").is_file():
        return folder
    build_demo(folder, n_people=PEOPLE, n_holdout=HOLDOUT_PEOPLE, n_forget=FORGET_PEOPLE, epochs=EPOCHS)
    retrain(folder, folder / "retrained")
    n_train = sum(1 for _ in (folder / "train.jsonl").open())
    n_forget = len((folder / "forget_ids.txt").read_text().split())
    record = {
        "case": "demo",
        "kind": "the demo: GPT-2-shaped causal LM trained from a config on people Q/A (dist_unlearn.demo)",
        "recipe": {"epochs": EPOCHS, "lr": 3e-3, "batch_size": 16, "optimizer": "adam", "seed": 0},
        "rows": {"train": n_train, "forget": n_forget, "retained": n_train - n_forget},
        "retraining_example_passes": EPOCHS * (n_train - n_forget),
        "subject_column": "person",
        "prompt_template": QA_TEMPLATE,
    }
    (folder / "case.json").write_text(json.dumps(record, indent=1))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    build_case(args.out)


if __name__ == "__main__":
    main()
