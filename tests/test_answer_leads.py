"""The extraction condition of ``match_unseen``: answer leads, the stop rule's verbatim limit, the lead term.

References: greedy decoding with ``model.generate`` on a tiny GPT-2 (a row's lead is > 0 exactly when
greedy decoding says its answer); the stop rule's decisions against the allowance computed by hand; the
objective's value against the bin and lead terms written out with plain tensor ops.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dist_unlearn.answer_leads import (
    LEAD_WEIGHT,
    answer_leads,
    lead_penalty,
    losses_and_leads,
    verbatim_allowance,
)
from dist_unlearn.models.losses import CausalLMLoss
from dist_unlearn.stopping import ForgetStopRule

EOS = 63


def tiny_lm() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32, bos_token_id=EOS,
                     eos_token_id=EOS)  # fmt: skip
    return GPT2LMHeadModel(cfg).eval()


def qa_rows(model: torch.nn.Module, n: int = 6, prompt_len: int = 4, answer_len: int = 5):
    """Rows prompt + answer + EOS: the odd rows' answers are the model's greedy continuation, the even rows'
    the same with one token changed (the answer greedy decoding does not give)."""
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, EOS, (n, prompt_len), generator=g)
    with torch.no_grad():
        out = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=answer_len,
                             do_sample=False, pad_token_id=EOS, eos_token_id=None)  # fmt: skip
    greedy = out[:, prompt_len:]
    answers = greedy.clone()
    for i in range(0, n, 2):
        t = i % answer_len
        answers[i, t] = (answers[i, t] + 1) % EOS
    ids = torch.cat([prompts, answers, torch.full((n, 1), EOS)], dim=1)
    labels = ids.clone()
    labels[:, :prompt_len] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}, greedy, answers


def test_answer_lead_is_positive_exactly_when_greedy_decoding_says_the_answer():
    model = tiny_lm()
    batch, greedy, answers = qa_rows(model)
    with torch.no_grad():
        losses, leads = losses_and_leads(CausalLMLoss(), model, batch, skip_token=EOS)
    said = (greedy == answers).all(dim=1)
    assert said.tolist() == [False, True] * 3
    assert ((leads > 0) == said).all()
    # the losses are the per-example next-token losses, as the loss itself computes them one row at a time
    with torch.no_grad():
        rows = [{k: v[i : i + 1] for k, v in batch.items()} for i in range(6)]
        ref = torch.stack([CausalLMLoss()(model, row) for row in rows])
    assert torch.allclose(losses, ref, atol=1e-6)
    # the lead of a row is its weakest answer token's margin, computed here token by token
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits
    for i in range(6):
        margins = []
        for t in range(3, 8):  # logits at t predict the answer token at t + 1 (the EOS at 9 is skipped)
            z, a = logits[i, t], int(batch["input_ids"][i, t + 1])
            margins.append(float(z[a] - torch.cat([z[:a], z[a + 1 :]]).max()))
        assert float(leads[i]) == pytest.approx(min(margins), abs=1e-5)
    # counting the end-of-text token as part of the answer can only lower a lead
    assert (answer_leads(logits, batch["labels"]) <= leads + 1e-6).all()
    no_answer = torch.full_like(batch["labels"], -100)
    assert torch.isneginf(answer_leads(logits, no_answer)).all()


def test_stop_rule_continues_while_more_rows_are_verbatim_than_unseen_rows_allow():
    cal = np.linspace(1.0, 4.0, 40)
    forget = np.full(8, 2.5)  # losses among the unseen ones: the loss criterion says stop
    state = {"forget": np.zeros(8, dtype=bool), "calib": np.zeros(40, dtype=bool)}
    state["calib"][:5] = True  # 5 of 40 unseen rows said verbatim: 8 x 0.125 = 1 forget row allowed
    rule = ForgetStopRule(lambda: (forget, cal), band=0.1, verbatim=lambda: (state["forget"], state["calib"]))
    assert verbatim_allowance(8, 5 / 40) == 1 and verbatim_allowance(30, 0.0425) == 1
    state["forget"][:2] = True
    first = rule.check(-1)
    assert first.decision == "continue" and first.verbatim["allowed"] == 1 and first.verbatim["blocks_stop"]
    assert first.verbatim["rows"] == [0, 1] and rule.unseen_verbatim_rate == pytest.approx(0.125)
    state["calib"][:] = False  # the rate is the one at the weights as given: a later check does not move it
    state["forget"][1] = False
    assert rule.check(3).decision == "stop"
    without = ForgetStopRule(lambda: (forget, cal), band=0.1)
    assert without.check(-1).decision == "stop" and without.check(-1).verbatim is None
    assert "extraction" in rule.describe() and "extraction" not in without.describe()


@torch.no_grad()
def test_marked_rows_add_the_lead_hinge_to_the_bin_objective():
    from dist_unlearn.curvature.objective import BinForgetLoss
    from dist_unlearn.targets import ForgetTargets, bin_penalty

    model = tiny_lm()
    batch, _, _ = qa_rows(model)
    loss = CausalLMLoss()
    per_row, leads = losses_and_leads(loss, model, batch, skip_token=EOS)
    targets = ForgetTargets(["a", "a", "a", "b", "b", "b"])
    targets.update(per_row.detach().double().numpy() - 0.3, np.linspace(2.0, 6.0, 20))
    targets.skip_token = EOS
    idx = torch.arange(6)
    term = BinForgetLoss(loss, targets)
    table = targets.table.float()
    bins = table[:, 2] * bin_penalty(per_row, table[:, 0], table[:, 1])
    assert float(term(model, (batch, idx))) == pytest.approx(float(bins.mean()), rel=1e-5)
    marked = np.array([False, True, False, True, False, False])
    targets.mark(marked)
    hinge = LEAD_WEIGHT * table[:, 2] * targets.scale**2 * lead_penalty(leads) * torch.as_tensor(marked)
    assert float(term(model, (batch, idx))) == pytest.approx(float((bins + hinge).mean()), rel=1e-5)
    assert float(hinge[1]) > 0  # a verbatim row with its weakest token ahead: the hinge pushes it down
    targets.mark(np.zeros(6, dtype=bool))
    assert targets.marked is None
