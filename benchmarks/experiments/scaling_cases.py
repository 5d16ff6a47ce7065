"""The scaling cases: one GPT-2-shaped LM recipe fine-tuned on people's Q/A records at 1x, 10x and 100x rows.

Every scale forgets the same people (the first ``FORGET_PEOPLE`` of the list, with the same records) and is
judged on the same holdout people (never trained on); only the number of other people grows. The model is
the demo's tiny GPT-2 config (2 layers, 64 wide, trained from scratch with the demo's recipe: Adam 3e-3,
cosine, batch 16); the tokenizer is trained once on the records of every scale and the word lists, so all
scales share it. Retraining = the same recipe on the retained rows: its example passes are epochs x
retained rows (:data:`EPOCHS`; ``case.json`` records how well the forget people are memorised at each scale).

Cached under ``runs/scaling/<scale>x/`` (gitignored): ``train.jsonl``, ``holdout.jsonl``,
``forget_ids.txt``, ``model/``, ``retrained/``, ``case.json`` (sizes, epochs, training / retraining passes
and wall seconds, losses and the forget-vs-holdout AUC of both models).

    python benchmarks/experiments/scaling_cases.py --scales 1 10 100 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "cases"))

from people import VOCABULARY, make_people, qa_rows, write_jsonl  # noqa: E402

TEMPLATE = "Question: {prompt}\nAnswer:"
BASE_PEOPLE, FORGET_PEOPLE, HOLDOUT_PEOPLE, SEED = 12, 4, 16, 3
SCALES = (1, 10, 100)
EPOCHS = {1: 80, 10: 80, 100: 80}
"""Fine-tuning (and retraining) epochs per scale: the demo's 80 at every scale. (30 epochs at 100x left the
forget people barely fitted better than unseen ones: forget-vs-holdout AUC 0.58.)"""
CACHE = ROOT / "runs" / "scaling"


def text_format() -> Any:
    from dist_unlearn.data.tokenize import TextFormat

    return TextFormat(
        "prompt_response", prompt_column="question", response_column="answer", prompt_template=TEMPLATE
    )


def people() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training people of the largest scale, holdout people): the first ``BASE_PEOPLE * s`` of the first
    list are scale s's (a prefix, so the forget people and their records are the same at every scale)."""
    everyone = make_people(BASE_PEOPLE * max(SCALES) + HOLDOUT_PEOPLE, SEED)
    return everyone[: BASE_PEOPLE * max(SCALES)], everyone[BASE_PEOPLE * max(SCALES) :]


def token_rows(rows: list[dict[str, Any]], tok: Any) -> Any:
    import datasets

    from dist_unlearn.data.tokenize import tokenize_rows

    return tokenize_rows(datasets.Dataset.from_list(rows), tok, text_format())


def tokenizer(root: Path = CACHE) -> Any:
    """The shared BPE tokenizer (cached), trained on every scale's records, the holdout and the word lists."""
    from transformers import AutoTokenizer

    folder = root / "tokenizer"
    if (folder / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(folder))
    from dist_unlearn.demo.people import train_tokenizer

    train, holdout = people()
    texts = [
        TEMPLATE.format(prompt=r["question"]) + " " + r["answer"]
        for r in qa_rows(train, SEED) + qa_rows(holdout, SEED + 7)
    ]
    tok = train_tokenizer(texts + [" ".join(VOCABULARY)] * 3)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(folder))
    return tok


def _fit(tok: Any, rows: list[dict[str, Any]], epochs: int, out: Path) -> tuple[float, float]:
    """The recipe on ``rows``, saved to ``out``: (last epoch's train loss, wall seconds)."""
    from dist_unlearn.demo.people import fine_tune, small_gpt2

    model = small_gpt2(tok, n_embd=64, n_layer=2, seed=SEED)
    t0 = time.perf_counter()
    hist = fine_tune(model, token_rows(rows, tok), pad_id=tok.pad_token_id, epochs=epochs, seed=SEED)
    wall = time.perf_counter() - t0
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return hist[-1], wall


def build_scale(scale: int, root: Path = CACHE, log: Any = print) -> Path:
    """Build (or reuse) one scale's case folder (module docstring)."""
    from dist_unlearn.eval.mia import loss_mia_auc
    from dist_unlearn.job.evidence import per_example
    from dist_unlearn.models import load_model

    folder = root / f"{scale}x"
    if (folder / "case.json").is_file():
        return folder
    tok = tokenizer(root)
    train_people, holdout_people = people()
    train = qa_rows(train_people[: BASE_PEOPLE * scale], SEED)
    holdout = qa_rows(holdout_people, SEED + 7, first_id=10**6)
    forget_names = {p["name"] for p in train_people[:FORGET_PEOPLE]}
    forget_ids = [r["id"] for r in train if r["person"] in forget_names]
    retained = [r for r in train if r["person"] not in forget_names]
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(train, folder / "train.jsonl")
    write_jsonl(holdout, folder / "holdout.jsonl")
    (folder / "forget_ids.txt").write_text("".join(f"{i}\n" for i in forget_ids))
    epochs = EPOCHS[scale]
    log(f"{scale}x: fine-tuning on {len(train)} rows of {BASE_PEOPLE * scale} people ({epochs} epochs)")
    loss, wall = _fit(tok, train, epochs, folder / "model")
    log(f"{scale}x: retraining on the {len(retained)} retained rows ({wall:.0f} s for the fine-tune)")
    loss_r, wall_r = _fit(tok, retained, epochs, folder / "retrained")
    losses = {}
    forget_rows = token_rows([r for r in train if r["person"] in forget_names], tok)
    holdout_rows = token_rows(holdout, tok)
    for which in ("model", "retrained"):
        m = load_model(str(folder / which), task="causal_lm")
        f = per_example(m, forget_rows, "causal_lm", pad_id=tok.pad_token_id)[0]
        h = per_example(m, holdout_rows, "causal_lm", pad_id=tok.pad_token_id)[0]
        losses[which] = {
            "forget_loss": float(f.mean()),
            "holdout_loss": float(h.mean()),
            "forget_vs_holdout_auc": loss_mia_auc(f, h),
        }
    record = {
        "scale": scale,
        "rows": {
            "train": len(train),
            "forget": len(forget_ids),
            "retained": len(retained),
            "holdout": len(holdout),
        },  # fmt: skip
        "people": {"train": BASE_PEOPLE * scale, "forget": sorted(forget_names), "holdout": HOLDOUT_PEOPLE},
        "recipe": {
            "epochs": epochs,
            "lr": 3e-3,
            "batch_size": 16,
            "optimizer": "adam",
            "schedule": "cosine",
            "model": "GPT-2, 2 layers, 64 wide (the demo's)",
            "seed": SEED,
        },  # fmt: skip
        "train_loss_last_epoch": {"model": loss, "retrained": loss_r},
        "training_example_passes": epochs * len(train),
        "retraining_example_passes": epochs * len(retained),
        "wall_s": {"training": wall, "retraining": wall_r},
        "losses": losses,
    }
    (folder / "case.json").write_text(json.dumps(record, indent=1))
    log(f"{scale}x: {json.dumps(losses)}")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", type=int, nargs="+", default=list(SCALES), choices=SCALES)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for s in args.scales:
        build_scale(s)


if __name__ == "__main__":
    main()
