"""Two user cases: a GPT-2-shaped LM that memorised people's Q/A records, each with its retrained model.

What a user has: a base model (here a small GPT-2 from a config, pre-trained on the Q/A records of 120
background people so that it knows the format; its BPE tokenizer trained on those records and the word
lists, so that every name is made of known tokens), fine-tuned on their own records, and a deletion request
naming some people. Two ways of fine-tuning:

- ``people_qa``: the whole model fine-tuned (full fine-tune) on 36 people, 4-8 records each;
- ``lora_people``: a LoRA adapter (peft, r=8 on the attention and MLP projections) on 36 other people.

For each case the folder holds what the unlearn job reads (``model/``, ``train.jsonl``, ``holdout.jsonl`` =
records of 16 people the model never saw, ``forget_ids.txt`` = every record of 5 people) and the reference
a benchmark needs: ``retrained/``, the same recipe run on the retained rows only, and ``case.json`` (sizes,
losses, the retraining cost in example passes = epochs x retained rows). Deterministic: seeded data, seeded
training, one torch thread.

    python benchmarks/cases/gpt2_cases.py --out /tmp/cases            # both cases (and the shared base)
    python benchmarks/cases/gpt2_cases.py --out /tmp/cases --case lora_people
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from people import VOCABULARY, make_people, qa_rows, write_jsonl  # noqa: E402

TEMPLATE = "Question: {prompt}\nAnswer:"
BACKGROUND_PEOPLE, BACKGROUND_EPOCHS, BACKGROUND_SEED = 120, 30, 100
CASES: dict[str, dict[str, Any]] = {
    "people_qa": {
        "seed": 1,
        "people": 36,
        "holdout": 16,
        "forget": 5,
        "epochs": 40,
        "lr": 2e-3,
        "lora": False,
    },
    "lora_people": {
        "seed": 2,
        "people": 36,
        "holdout": 16,
        "forget": 5,
        "epochs": 60,
        "lr": 5e-3,
        "lora": True,
    },
}


def _fmt() -> Any:
    from dist_unlearn.data.tokenize import TextFormat

    return TextFormat(
        "prompt_response", prompt_column="question", response_column="answer", prompt_template=TEMPLATE
    )


def token_rows(rows: list[dict[str, Any]], tok: Any) -> Any:
    import datasets

    from dist_unlearn.data.tokenize import tokenize_rows

    return tokenize_rows(datasets.Dataset.from_list(rows), tok, _fmt())


def build_base(folder: Path, log=print) -> Path:
    """The shared base: a BPE tokenizer and a 4-layer GPT-2 pre-trained on the background people's records."""
    from dist_unlearn.demo.people import fine_tune, small_gpt2, train_tokenizer

    if (folder / "config.json").is_file():
        return folder
    rows = qa_rows(make_people(BACKGROUND_PEOPLE, BACKGROUND_SEED), BACKGROUND_SEED)
    # the tokenizer has seen the words of every name and fact (as a tokenizer trained on a large corpus has),
    # so no person's name falls apart into bytes; the model has seen only the background people
    texts = [TEMPLATE.format(prompt=r["question"]) + " " + r["answer"] for r in rows]
    tok = train_tokenizer(texts + [" ".join(VOCABULARY)] * 3)
    model = small_gpt2(tok, n_embd=96, n_layer=4, n_head=4, seed=BACKGROUND_SEED)
    log(f"base: pre-training on {len(rows)} background records, {BACKGROUND_EPOCHS} epochs")
    hist = fine_tune(model, token_rows(rows, tok), pad_id=tok.pad_token_id, epochs=BACKGROUND_EPOCHS, seed=0)
    log(f"base: train loss {hist[-1]:.3f}")
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def _train(base: Path, rows: Any, pad: int, spec: dict[str, Any], out: Path) -> float:
    """Fine-tune the base on token ``rows`` by the case's recipe, save to ``out``; the last epoch's loss."""
    from transformers import AutoModelForCausalLM

    from dist_unlearn.demo.people import fine_tune

    torch.manual_seed(spec["seed"])
    model = AutoModelForCausalLM.from_pretrained(str(base))
    if spec["lora"]:
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["c_attn", "c_proj", "c_fc"],
                         fan_in_fan_out=True, init_lora_weights=True)  # fmt: skip
        model = get_peft_model(model, cfg)
    hist = fine_tune(model, rows, pad_id=pad, epochs=spec["epochs"], lr=spec["lr"], seed=spec["seed"])
    model.save_pretrained(str(out))
    return hist[-1]


def build_case(root: Path, name: str, log=print) -> Path:
    """Build one case (module docstring) under ``root/name``; reused when ``case.json`` exists."""
    from transformers import AutoTokenizer

    from dist_unlearn.eval.mia import loss_mia_auc
    from dist_unlearn.job.evidence import per_example

    folder = root / name
    if (folder / "case.json").is_file():
        return folder
    spec = CASES[name]
    base = build_base(root / "base", log)
    tok = AutoTokenizer.from_pretrained(str(base))
    people = make_people(spec["people"] + spec["holdout"], spec["seed"])
    train = qa_rows(people[: spec["people"]], spec["seed"])
    holdout = qa_rows(people[spec["people"] :], spec["seed"] + 7, first_id=len(train))
    forget_names = {p["name"] for p in people[: spec["forget"]]}
    forget_ids = [r["id"] for r in train if r["person"] in forget_names]
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(train, folder / "train.jsonl")
    write_jsonl(holdout, folder / "holdout.jsonl")
    (folder / "forget_ids.txt").write_text("".join(f"{i}\n" for i in forget_ids))
    retained = [r for r in train if r["id"] not in set(forget_ids)]
    pad = tok.pad_token_id
    log(f"{name}: fine-tuning on {len(train)} records of {spec['people']} people ({spec['epochs']} epochs)")
    loss = _train(base, token_rows(train, tok), pad, spec, folder / "model")
    if not spec["lora"]:
        tok.save_pretrained(str(folder / "model"))
    log(f"{name}: retraining without the {spec['forget']} people ({len(retained)} records)")
    loss_r = _train(base, token_rows(retained, tok), pad, spec, folder / "retrained")
    if not spec["lora"]:
        tok.save_pretrained(str(folder / "retrained"))
    from dist_unlearn.job.model import inspect_model, load_job_model

    facts = {}
    for which in ("model", "retrained"):
        m = load_job_model(inspect_model(folder / which))
        f = per_example(m, token_rows([r for r in train if r["id"] in set(forget_ids)], tok), "causal_lm",
                        pad_id=pad)[0]  # fmt: skip
        h = per_example(m, token_rows(holdout, tok), "causal_lm", pad_id=pad)[0]
        facts[which] = {"forget_loss": float(f.mean()), "holdout_loss": float(h.mean()),
                        "forget_vs_holdout_auc": loss_mia_auc(f, h)}  # fmt: skip
    record = {
        "case": name,
        "kind": "LoRA adapter (peft) on a GPT-2-shaped base" if spec["lora"] else "GPT-2-shaped causal LM",
        "recipe": {k: spec[k] for k in ("epochs", "lr", "seed")} | {"batch_size": 16, "optimizer": "adam"},
        "rows": {
            "train": len(train),
            "forget": len(forget_ids),
            "retained": len(retained),
            "holdout": len(holdout),
        },
        "people": {"train": spec["people"], "forget": sorted(forget_names), "holdout": spec["holdout"]},
        "train_loss_last_epoch": {"model": loss, "retrained": loss_r},
        "retraining_example_passes": spec["epochs"] * len(retained),
        "losses": facts,
        "subject_column": "person",
        "prompt_template": TEMPLATE,
    }
    (folder / "case.json").write_text(json.dumps(record, indent=1))
    log(f"{name}: {json.dumps(facts)}")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--case", choices=sorted(CASES), action="append")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name in args.case or sorted(CASES):
        build_case(args.out, name)


if __name__ == "__main__":
    main()
