"""LM evaluation on a real (tiny) HF GPT-2: padding, batched generate, evaluate_lm end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import hmean
from test_eval_lm import FORGET, HOLDOUT, RETAIN, TOK, V

from dist_unlearn.errors import ConfigError, DataError
from dist_unlearn.eval import QAFormat, evaluate_lm, generate_answers, lm_reference, token_logprobs

torch.set_num_threads(1)


def tiny_gpt2(seed):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=V, n_positions=64, n_embd=16, n_layer=1, n_head=2, eos_token_id=0, bos_token_id=0
    )
    return GPT2LMHeadModel(config).eval()


def test_gpt2_padding_and_batched_generation_match_unbatched():
    from dist_unlearn.eval.text import _greedy

    model = tiny_gpt2(0)
    seqs = [TOK("hello there")["input_ids"], TOK("a b")["input_ids"], TOK("question: what?")["input_ids"]]
    starts = [3, 1, 5]
    got = token_logprobs(model, seqs, starts, batch_size=3, pad_token_id=0)
    for seq, s, lp in zip(seqs, starts, got, strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0].double()
        ref = torch.log_softmax(logits, -1)[torch.arange(len(seq) - 1), torch.tensor(seq[1:])].numpy()[
            s - 1 :
        ]
        np.testing.assert_allclose(lp, ref, rtol=1e-5, atol=1e-6)
    questions = [r["question"] for r in FORGET[:4]]
    batched = generate_answers(model, TOK, questions, max_new_tokens=5, batch_size=4)
    for q, text in zip(questions, batched, strict=True):
        prompt = QAFormat().prompt_ids(TOK, q)
        ids = _greedy(model, prompt, 5, 0, torch.device("cpu"))
        ids = ids[: ids.index(0)] if 0 in ids else ids
        assert text == TOK.decode(ids)
    with pytest.raises(DataError, match="positions"):
        token_logprobs(model, [list(range(1, 70))], [1])


def test_evaluate_lm_oracle_against_itself_with_reference_and_rouge():
    model = tiny_gpt2(1)
    settings = dict(batch_size=8, max_new_tokens=6, rouge=True)
    ref = lm_reference(model, TOK, forget=FORGET, retain=RETAIN, holdout=HOLDOUT, **settings)
    res = evaluate_lm(
        model, TOK, forget=FORGET, retain=RETAIN, holdout=HOLDOUT, oracle=ref, original=model, **settings
    )
    assert res["forget_quality"] == pytest.approx(1.0) and res["forget_ks_statistic"] == 0.0
    assert (
        res["privleak"] == pytest.approx(0.0) and res["param_distance"] == 0.0 and res["update_norm"] == 0.0
    )
    for key in ("forget_Q_A_ROUGE", "retain_Q_A_ROUGE", "model_utility", "mia_loss", "mia_min_k"):
        assert res[key] is not None and 0.0 <= res[key] <= 1.0
        assert res[key] == pytest.approx(res[f"oracle_{key}"])
    parts = [res["retain_Q_A_Prob"], res["retain_Q_A_ROUGE"], res["retain_Truth_Ratio"]]
    expected = 0.0 if min(parts) == 0 else hmean(parts)
    assert res["model_utility"] == pytest.approx(expected)
    with pytest.raises(ConfigError, match="settings"):
        evaluate_lm(model, TOK, forget=FORGET, retain=RETAIN, oracle=ref, rouge=False)
