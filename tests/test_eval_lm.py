"""LM evaluation (TOFU-style) vs hand computations on a bigram model whose logits we construct."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import hmean, ks_2samp

from dist_unlearn.errors import ConfigError, DataError
from dist_unlearn.eval import (
    QAFormat,
    evaluate_lm,
    generate_answers,
    perplexity,
    rouge_l_recall,
    truth_ratio_from_logprobs,
)

torch.set_num_threads(1)


class CharTokenizer:
    """Character-level tokenizer (id 0 = EOS, no pad token)."""

    chars = " abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,?:'\n-"
    eos_token_id = 0
    pad_token_id = None
    vocab_size = len(chars) + 1

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [self.chars.index(c) + 1 for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.chars[i - 1] for i in ids if i != 0)


TOK = CharTokenizer()
V = CharTokenizer.vocab_size


class Bigram(torch.nn.Module):
    """logits(t_i) = table[t_{i-1}]: every log-probability is known in closed form."""

    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(2.0 * torch.randn(V, V, generator=g))

    def forward(self, input_ids, attention_mask=None):
        return self.table[input_ids]


def hand_logprobs(model, question, answer, fmt=None):
    fmt = fmt or QAFormat()
    table = model.table.detach().double().numpy()
    lsm = table - logsumexp(table, axis=1, keepdims=True)
    prompt = TOK(fmt.template.format(question=question))["input_ids"]
    full = prompt + TOK(fmt.answer_prefix + answer)["input_ids"]
    return np.array([lsm[full[i - 1], full[i]] for i in range(len(prompt), len(full))])


def words(rng, n):
    letters = "abcdefghijklmnop"
    return " ".join("".join(rng.choice(list(letters), size=rng.integers(2, 6))) for _ in range(n))


def qa_rows(seed, n, truth=True):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        row = {"question": words(rng, 3) + "?", "answer": words(rng, 3)}
        if truth:
            row["paraphrased_answer"] = words(rng, 3)
            row["perturbed_answers"] = [words(rng, 3) for _ in range(int(rng.integers(1, 4)))]
        rows.append(row)
    return rows


FORGET, RETAIN, HOLDOUT = qa_rows(0, 12), qa_rows(1, 10), qa_rows(2, 9, truth=False)


def hand_metrics(model):
    def norm_prob(q, a):
        return np.exp(np.mean(hand_logprobs(model, q, a)))

    out = {}
    for name, rows in (("forget", FORGET), ("retain", RETAIN)):
        lps = [hand_logprobs(model, r["question"], r["answer"]) for r in rows]
        out[f"{name}_ppl"] = np.exp(-sum(lp.sum() for lp in lps) / sum(lp.size for lp in lps))
        out[f"{name}_Q_A_Prob"] = np.mean([np.exp(lp.mean()) for lp in lps])
        out[f"{name}_tr"] = np.array(
            [
                np.mean([norm_prob(r["question"], p) for p in r["perturbed_answers"]])
                / norm_prob(r["question"], r["paraphrased_answer"])
                for r in rows
            ]
        )
        out[f"{name}_lps"] = lps
    out["holdout_lps"] = [hand_logprobs(model, r["question"], r["answer"]) for r in HOLDOUT]
    return out


def brute_auc(members, nonmembers):
    wins = sum(1.0 if m > n else 0.5 if m == n else 0.0 for m, n in itertools.product(members, nonmembers))
    return wins / (len(members) * len(nonmembers))


def test_evaluate_lm_matches_hand_computation():
    model, oracle = Bigram(0), Bigram(1)
    res = evaluate_lm(
        model,
        TOK,
        forget=FORGET,
        retain=RETAIN,
        holdout=HOLDOUT,
        oracle=oracle,
        rouge=False,
        batch_size=5,
        mink_k=0.4,
    )
    h, ho = hand_metrics(model), hand_metrics(oracle)
    for key in ("forget_ppl", "retain_ppl", "forget_Q_A_Prob", "retain_Q_A_Prob"):
        assert res[key] == pytest.approx(h[key], rel=1e-5), key
        assert res[f"oracle_{key}"] == pytest.approx(ho[key], rel=1e-5), key
    ks = ks_2samp(h["forget_tr"], ho["forget_tr"])
    assert res["forget_quality"] == pytest.approx(ks.pvalue, rel=1e-6)
    assert res["forget_ks_statistic"] == pytest.approx(ks.statistic)
    assert res["forget_truth_ratio"] == pytest.approx(np.mean(np.minimum(h["forget_tr"], 1 / h["forget_tr"])))
    retain_tr = np.mean(np.maximum(0, 1 - h["retain_tr"]))
    assert res["retain_Truth_Ratio"] == pytest.approx(retain_tr, rel=1e-6)
    if retain_tr > 0:
        assert res["model_utility"] == pytest.approx(hmean([h["retain_Q_A_Prob"], retain_tr]), rel=1e-6)
    member = [-np.mean(lp) for lp in h["forget_lps"]]
    non = [-np.mean(lp) for lp in h["holdout_lps"]]
    assert res["mia_loss"] == pytest.approx(brute_auc([-m for m in member], [-n for n in non]))

    def mink(lp):  # open-unlearning's mia_min_k: the max(1, floor(k n)) lowest token log-probs
        return np.sort(lp)[: max(1, int(0.4 * lp.size))].mean()

    auc_model = brute_auc([mink(lp) for lp in h["forget_lps"]], [mink(lp) for lp in h["holdout_lps"]])
    auc_oracle = brute_auc([mink(lp) for lp in ho["forget_lps"]], [mink(lp) for lp in ho["holdout_lps"]])
    assert res["mia_min_k"] == pytest.approx(auc_model)
    assert res["privleak"] == pytest.approx((auc_model - auc_oracle) / auc_oracle * 100)
    dist = float(torch.linalg.norm((model.table - oracle.table).detach().double()))
    assert res["param_distance"] == pytest.approx(dist)


def test_perplexity_and_truth_ratio_formulas():
    lps = [np.log([0.5, 0.25]), np.log([0.125])]
    assert perplexity(lps) == pytest.approx(np.exp(-(np.log(0.5) + np.log(0.25) + np.log(0.125)) / 3))
    assert perplexity([np.log([0.25] * 4)]) == pytest.approx(4.0)
    para = np.log([0.5, 0.2])
    pert = [np.log([0.1, 0.3]), np.log([0.4])]
    np.testing.assert_allclose(truth_ratio_from_logprobs(para, pert), [0.2 / 0.5, 0.4 / 0.2])
    np.testing.assert_allclose(
        truth_ratio_from_logprobs(para, pert, perturbed_mean="geometric"), [np.sqrt(0.03) / 0.5, 0.4 / 0.2]
    )
    with pytest.raises(ConfigError):
        truth_ratio_from_logprobs(para, pert, perturbed_mean="median")


def test_rouge_l_recall_by_hand():
    # LCS(the cat sat on mat, the cat is on the mat) = the cat on mat -> 4 of 6 reference words
    assert rouge_l_recall("The cat sat on mat.", "the cat is on the mat") == pytest.approx(4 / 6)
    assert rouge_l_recall("", "a b") == 0.0
    assert rouge_l_recall("x y z", "x y z") == 1.0


def test_greedy_generation_of_bigram_matches_argmax_chain():
    model = Bigram(3)
    table = model.table.detach().numpy()
    questions = [r["question"] for r in FORGET[:3]]
    texts = generate_answers(model, TOK, questions, max_new_tokens=6)
    for q, text in zip(questions, texts, strict=True):
        prev, ids = TOK(QAFormat().template.format(question=q))["input_ids"][-1], []
        for _ in range(6):
            prev = int(np.argmax(table[prev]))
            if prev == 0:
                break
            ids.append(prev)
        assert text == TOK.decode(ids)


def test_lm_bad_rows():
    model = Bigram(0)
    bad = [dict(FORGET[0])]
    del bad[0]["perturbed_answers"]
    with pytest.raises(DataError, match="perturbed_answers"):
        evaluate_lm(model, TOK, forget=bad, retain=RETAIN, oracle=model, rouge=False)
    empty = [dict(FORGET[0], perturbed_answers=[])]
    with pytest.raises(DataError, match="non-empty"):
        evaluate_lm(model, TOK, forget=empty, retain=RETAIN, oracle=model, rouge=False)
    with pytest.raises(DataError, match="empty"):
        evaluate_lm(model, TOK, forget=[], retain=RETAIN, oracle=model, rouge=False)


def test_diverged_lm_gives_none_not_an_error():
    broken = Bigram(0)
    with torch.no_grad():
        broken.table[:] = float("nan")
    res = evaluate_lm(
        broken, TOK, forget=FORGET, retain=RETAIN, holdout=HOLDOUT, oracle=Bigram(1), rouge=False
    )
    assert res["forget_quality"] is None and res["mia_min_k"] is None and res["privleak"] is None
    assert np.isnan(res["forget_ppl"]) and res["oracle_mia_min_k"] is not None
