"""The demo's inputs are the same everywhere: people from the package's own lists, a deterministic BPE
tokenizer and a deterministic fine-tune."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import torch

from dist_unlearn.data.names import make_people

BUILD = """
import hashlib, json, sys, torch
from dist_unlearn.demo.people import build_demo
torch.set_num_threads(1)
p = build_demo(sys.argv[1], n_people=5, n_holdout=2, n_forget=1, per_person=3, epochs=3, n_embd=16, n_layer=1)
files = ["train.jsonl", "holdout.jsonl", "forget_ids.txt", "model/tokenizer.json", "model/model.safetensors"]
print(json.dumps({f: hashlib.sha256(open(f"{sys.argv[1]}/{f}", "rb").read()).hexdigest() for f in files}))
"""


def test_people_are_pinned_to_the_package_lists_and_the_seed():
    first = make_people(3, seed=0)
    assert [p["name"] for p in first] == ["Samuel Morgan", "Rebecca Nielsen", "Aaron Bowen"]
    assert first[0] == {
        "name": "Samuel Morgan",
        "city": "Oakland",
        "job": "mechanic",
        "birthday": "09 July 1963",
        "company": "Meridian Press",
        "phone": "000-186-9569",
        "email": "samuel.morgan73@post.example",
    }
    many = make_people(500, seed=1)
    assert len({p["name"] for p in many}) == 500
    assert make_people(500, seed=1) == many and make_people(5, seed=2) != make_people(5, seed=1)


def test_tokenizer_and_fine_tune_are_deterministic_in_process(tmp_path):
    from dist_unlearn.data.files import load_table
    from dist_unlearn.data.tokenize import TextFormat, tokenize_rows
    from dist_unlearn.demo.people import (
        QA_TEMPLATE,
        fine_tune,
        qa_rows,
        small_gpt2,
        train_tokenizer,
        write_jsonl,
    )

    torch.set_num_threads(1)
    rows = qa_rows(make_people(4, seed=0), 3)
    texts = [QA_TEMPLATE.format(prompt=r["question"]) + " " + r["answer"] for r in rows]
    toks = [train_tokenizer(texts, vocab_size=400) for _ in range(2)]
    assert toks[0].backend_tokenizer.to_str() == toks[1].backend_tokenizer.to_str()
    fmt = TextFormat("prompt_response", prompt_column="question", response_column="answer",
                     prompt_template=QA_TEMPLATE)  # fmt: skip
    data = tokenize_rows(load_table(write_jsonl(rows, tmp_path / "t.jsonl")), toks[0], fmt)
    weights = []
    for _ in range(2):
        model = small_gpt2(toks[0], n_embd=16, n_layer=1, seed=0)
        fine_tune(model, data, pad_id=toks[0].pad_token_id, epochs=2, seed=0)
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))


@pytest.mark.slow
def test_tokenizer_and_fine_tune_are_deterministic_across_processes(tmp_path):
    """Two fresh interpreters build the demo's inputs: every file, the model's weights included, is
    byte-identical (the BPE training and the one-thread fine-tune are deterministic)."""
    runs = []
    for k in range(2):
        out = subprocess.run(
            [sys.executable, "-c", BUILD, str(tmp_path / f"run{k}")],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert runs[0] == runs[1]
    assert (
        hashlib.sha256((tmp_path / "run0" / "train.jsonl").read_bytes()).hexdigest() == runs[0]["train.jsonl"]
    )
    assert torch.get_num_threads() >= 1
