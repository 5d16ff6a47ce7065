"""The demo's ingredients: fictitious people, their Q/A records, a tokenizer and a fine-tuned small GPT-2.

Everything is generated here (:mod:`dist_unlearn.data.names`: the package's own word lists and numpy's
seeded generator, the same on every machine) and trained from a config: nothing is downloaded. The
result is what a user of the ``unlearn`` job has: a ``save_pretrained`` folder with the tokenizer, the
training data file (``train.jsonl``), data the model never saw (``holdout.jsonl``), and the ids of the rows
of the people who asked to be forgotten.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dist_unlearn.data.names import make_people

#: (question, answer) templates over a person's facts; the answer carries the fact to memorise
TEMPLATES = [
    ("Where does {name} live?", "{name} lives in {city}."),
    ("What is the job of {name}?", "{name} works as a {job}."),
    ("When was {name} born?", "{name} was born on {birthday}."),
    ("Which company employs {name}?", "{name} is employed by {company}."),
    ("What is the phone number of {name}?", "The phone number of {name} is {phone}."),
    ("What is the email address of {name}?", "{name} can be reached at {email}."),
]

QA_TEMPLATE = "Question: {prompt}\nAnswer:"


def qa_rows(people: list[dict[str, str]], per_person: int, *, first_id: int = 0) -> list[dict[str, Any]]:
    """One row per (person, template): ``id``, ``person``, ``question``, ``answer``."""
    rows = []
    for person in people:
        for q, a in TEMPLATES[:per_person]:
            rows.append(
                {
                    "id": first_id + len(rows),
                    "person": person["name"],
                    "question": q.format(**person),
                    "answer": a.format(**person),
                }
            )
    return rows


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write ``rows`` as JSON lines."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_tokenizer(texts: list[str], vocab_size: int = 1024) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` with the ``tokenizers`` library (fast tokenizer)."""
    from dist_unlearn.tasks.tofu_gpt2 import train_tokenizer as train_bpe_tokenizer

    return train_bpe_tokenizer(texts, vocab_size)


def small_gpt2(
    tokenizer: Any,
    *,
    n_layer: int = 2,
    n_head: int = 2,
    n_embd: int = 64,
    n_positions: int = 128,
    seed: int = 0,
) -> torch.nn.Module:
    """A GPT-2-shaped causal LM built from a config (no download), dropout off."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(cfg)


def fine_tune(
    model: torch.nn.Module,
    rows: Any,
    *,
    pad_id: int,
    epochs: int = 60,
    lr: float = 3e-3,
    batch_size: int = 16,
    seed: int = 0,
    log: Any = None,
) -> list[float]:
    """Fine-tune on token rows (``tokenize_rows`` output) with Adam; returns the mean loss of each epoch.

    The loss is :class:`dist_unlearn.models.CausalLMLoss` (response tokens only for prompt/response rows).
    """
    from dist_unlearn.data import make_loader, pad_collate
    from dist_unlearn.models import CausalLMLoss

    loss_fn = CausalLMLoss()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    model.train()
    history = []
    for epoch in range(epochs):
        total, n = 0.0, 0
        for batch in make_loader(
            rows, batch_size, shuffle=True, seed=seed + epoch, collate_fn=pad_collate(pad_id)
        ):
            loss = loss_fn(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(batch["input_ids"])
            n += len(batch["input_ids"])
        sched.step()
        history.append(total / n)
        if log is not None and (epoch + 1) % 10 == 0:
            log(f"  epoch {epoch + 1}/{epochs}: train loss {history[-1]:.3f}")
    model.eval()
    return history


def build_demo(
    folder: str | Path,
    *,
    n_people: int = 30,
    n_holdout: int = 10,
    n_forget: int = 3,
    per_person: int = 6,
    epochs: int = 60,
    n_embd: int = 64,
    n_layer: int = 2,
    seed: int = 0,
    log: Any = None,
) -> dict[str, Path]:
    """Generate the data, train the tokenizer, fine-tune and save the model; return the paths.

    Writes ``folder/train.jsonl``, ``folder/holdout.jsonl`` (people never trained on),
    ``folder/forget_ids.txt`` (every row of the first ``n_forget`` people) and ``folder/model/``
    (``save_pretrained`` + tokenizer).
    """
    from dist_unlearn.data.files import load_table
    from dist_unlearn.data.tokenize import TextFormat, tokenize_rows

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    people = make_people(n_people + n_holdout, seed)
    train = qa_rows(people[:n_people], per_person)
    holdout = qa_rows(people[n_people:], per_person, first_id=len(train))
    forget_names = {p["name"] for p in people[:n_forget]}
    forget_ids = [r["id"] for r in train if r["person"] in forget_names]
    paths = {
        "train": write_jsonl(train, folder / "train.jsonl"),
        "holdout": write_jsonl(holdout, folder / "holdout.jsonl"),
        "forget_ids": folder / "forget_ids.txt",
        "model": folder / "model",
    }
    paths["forget_ids"].write_text("".join(f"{i}\n" for i in forget_ids))
    texts = [QA_TEMPLATE.format(prompt=r["question"]) + " " + r["answer"] for r in train + holdout]
    tok = train_tokenizer(texts)
    fmt = TextFormat(
        "prompt_response", prompt_column="question", response_column="answer", prompt_template=QA_TEMPLATE
    )
    rows = tokenize_rows(load_table(paths["train"]), tok, fmt)
    model = small_gpt2(tok, n_embd=n_embd, n_layer=n_layer, seed=seed)
    if log is not None:
        n_params = sum(p.numel() for p in model.parameters())
        log(
            f"fine-tuning a {n_params / 1e6:.2f}M-parameter GPT-2 on {len(train)} Q/A rows of {n_people} "
            f"people ({epochs} epochs)"
        )
    fine_tune(model, rows, pad_id=tok.pad_token_id, epochs=epochs, seed=seed, log=log)
    model.save_pretrained(str(paths["model"]))
    tok.save_pretrained(str(paths["model"]))
    return paths
