"""Membership attacks and extraction against values computed by hand on a tiny bigram model."""

from __future__ import annotations

import math
import zlib

import datasets
import numpy as np
import pytest
import torch
from torch import nn

from dist_unlearn.eval.attacks import attack_aucs, row_statistics
from dist_unlearn.eval.extraction import extract, prompt_and_answer, verbatim

WORDS = ["<eos>", "the", "cat", "sat", "on", "mat"]
W = torch.tensor(
    [  # next-token logits given the current token (a bigram model)
        [0.0, 2.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 3.0, 0.5, 0.0, 1.0],
        [0.0, 0.0, 0.0, 2.5, 0.0, 0.0],
        [0.5, 0.0, 0.0, 0.0, 2.0, 0.0],
        [0.0, 1.5, 0.0, 0.0, 0.0, 0.5],
        [2.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    ]
)


class Bigram(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(W.clone())

    def forward(self, input_ids, attention_mask=None, **_):
        return (self.table[input_ids],)


class WordTokenizer:
    eos_token_id = 0
    pad_token_id = 0

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(WORDS[i] for i in ids if not (skip_special_tokens and i == 0))


def lp(prev: int, tok: int) -> float:
    row = W[prev].tolist()
    return row[tok] - math.log(sum(math.exp(v) for v in row))


def moments(prev: int) -> tuple[float, float]:
    row = W[prev].tolist()
    z = math.log(sum(math.exp(v) for v in row))
    logp = [v - z for v in row]
    mu = sum(math.exp(a) * a for a in logp)
    var = sum(math.exp(a) * a * a for a in logp) - mu * mu
    return mu, var


ROWS = [
    # "the cat sat on mat <eos>", answer "sat on mat <eos>" (4 targets)
    {"input_ids": [1, 2, 3, 4, 5, 0], "labels": [-100, -100, 3, 4, 5, 0]},
    # "the mat <eos>": answer "mat <eos>" (2 targets)
    {"input_ids": [1, 5, 0], "labels": [-100, 5, 0]},
]


def by_hand(row: dict, k: float = 0.4) -> dict[str, float]:
    ids, labels = row["input_ids"], row["labels"]
    pos = [t for t in range(1, len(ids)) if labels[t] != -100]
    lps = [lp(ids[t - 1], ids[t]) for t in pos]
    zs = []
    for t in pos:
        mu, var = moments(ids[t - 1])
        zs.append((lp(ids[t - 1], ids[t]) - mu) / math.sqrt(max(var, 1e-6)))
    loss = -sum(lps) / len(lps)
    text = " ".join(WORDS[ids[t]] for t in pos if ids[t] != 0)
    head_lp, head_z = lps[:-1], zs[:-1]  # the last target (EOS) is left out of Min-K%
    keep = max(1, int(len(head_lp) * k))
    return {
        "loss": loss,
        "zlib": loss / len(zlib.compress(text.encode("utf-8"))),
        "min_k": -sum(sorted(head_lp)[:keep]) / keep,
        "min_k_plus_plus": -sum(sorted(head_z)[:keep]) / keep,
    }


def test_lm_attack_statistics_match_the_hand_computed_values():
    rows = datasets.Dataset.from_list(ROWS)
    stats = row_statistics(Bigram(), rows, "causal_lm", tokenizer=WordTokenizer(), batch_size=2)
    for i, row in enumerate(ROWS):
        want = by_hand(row)
        for name, value in want.items():
            assert stats.values[name][i] == pytest.approx(value, rel=1e-5), (i, name)
    # k = 1: Min-K% is the mean log-prob of every target but the last
    full = row_statistics(Bigram(), rows, "causal_lm", tokenizer=WordTokenizer(), k=1.0)
    assert full.values["min_k"][0] == pytest.approx(by_hand(ROWS[0], k=1.0)["min_k"], rel=1e-6)


def test_classifier_attacks_and_aucs_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.1, 0.2, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0]])

    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(logits.clone())

        def forward(self, input_ids, attention_mask=None, **_):
            return (self.w[input_ids[:, 0]],)

    rows = datasets.Dataset.from_list([{"input_ids": [i], "label": y} for i, y in enumerate([0, 2, 1, 0])])
    stats = row_statistics(Fixed(), rows, "classification", batch_size=3)
    for i, y in enumerate([0, 2, 1, 0]):
        p = np.exp(logits[i].numpy() - np.log(np.exp(logits[i].numpy()).sum()))
        assert stats.values["loss"][i] == pytest.approx(-math.log(p[y]), rel=1e-5)
        assert stats.values["confidence"][i] == pytest.approx(1 - p.max(), rel=1e-5)
        assert stats.values["entropy"][i] == pytest.approx(-(p * np.log(p)).sum(), rel=1e-5)
    assert stats.correct.tolist() == [1.0, 0.0, 1.0, 1.0]  # argmax of [1,1,1] is 0
    # members = rows 0, 2 (confident, right); non-members = rows 1, 3: every pair ordered -> AUC 1
    aucs = attack_aucs(stats.subset([0, 2]), stats.subset([1, 3]))
    assert aucs == {"loss": 1.0, "confidence": 1.0, "entropy": 1.0}
    # open-unlearning's convention: AUC 0 when the forget rows look *less* like members
    assert attack_aucs(stats.subset([1, 3]), stats.subset([0, 2]))["loss"] == 0.0


def test_extraction_greedy_answers_exact_match_and_rouge_by_hand():
    # greedy chain of the bigram model: the -> cat -> sat -> on -> the -> cat ...
    rows = datasets.Dataset.from_list(ROWS)
    assert prompt_and_answer(ROWS[0]) == ([1, 2], [3, 4, 5, 0])
    ex = extract(Bigram(), WordTokenizer(), rows, slack=0)
    # row 0: prompt "the cat" -> "sat on the cat" (4 new tokens); answer "sat on mat": LCS "sat on" = 2/3
    assert ex.generated[0] == "sat on the cat" and ex.answers[0] == "sat on mat"
    assert ex.rouge_l[0] == pytest.approx(2 / 3) and ex.exact[0] == 0.0
    # row 1: prompt "the" -> "cat sat" (2 tokens); answer "mat": 0
    assert ex.generated[1] == "cat sat" and ex.rouge_l[1] == 0.0
    assert verbatim("sat on mat and more", "sat on mat") and not verbatim("on mat", "sat on mat")
    # plain text rows (no labels): the first half is the prompt
    assert prompt_and_answer({"input_ids": [1, 2, 3, 4]}) == ([1, 2], [3, 4])
