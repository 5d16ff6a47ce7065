"""Robustness probes: round-to-nearest quantization by hand, and copies that never touch the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dist_unlearn.eval.probes import quantize_weight, quantized_copy, relearned_copy


def test_round_to_nearest_per_output_channel_by_hand():
    w = torch.tensor([[0.9, -0.3, 0.05], [2.0, 1.1, -0.7]])
    q = quantize_weight(w, bits=3, axis=0)  # nn.Linear: rows are output channels; 3 bits: levels -3..3
    for row, qrow in zip(w.tolist(), q.tolist(), strict=True):
        s = max(abs(v) for v in row) / 3
        assert qrow == pytest.approx([s * max(-3, min(3, round(v / s))) for v in row], rel=1e-6)
    # GPT-2's Conv1D keeps [in, out]: its output channels are the columns
    qt = quantize_weight(w.T.contiguous(), bits=3, axis=1)
    assert torch.allclose(qt, q.T)
    assert torch.equal(quantize_weight(torch.zeros(2, 2), 4, 0), torch.zeros(2, 2))
    with pytest.raises(Exception, match="between 2 and 16"):
        quantize_weight(w, bits=1, axis=0)


def test_quantized_copy_changes_linear_weights_only_and_leaves_the_model_alone():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    twin, record = quantized_copy(model, 4)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    q = twin.state_dict()
    assert not torch.equal(
        q["transformer.h.0.attn.c_attn.weight"], before["transformer.h.0.attn.c_attn.weight"]
    )
    # embeddings kept, and the output head tied to them
    assert torch.equal(q["transformer.wte.weight"], before["transformer.wte.weight"])
    assert twin.lm_head.weight.data_ptr() == twin.transformer.wte.weight.data_ptr()
    assert torch.equal(q["transformer.h.0.ln_1.weight"], before["transformer.h.0.ln_1.weight"])
    levels = np.unique(np.round(q["transformer.h.0.mlp.c_fc.weight"][:, 0].numpy() / (
        before["transformer.h.0.mlp.c_fc.weight"][:, 0].abs().max().item() / 7), 6))  # fmt: skip
    assert len(levels) <= 15 and record["matrices"] == 4 and 0 < record["relative_change"] < 0.3


def test_relearned_copy_trains_a_copy_within_its_cap():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2))
    before = [p.detach().clone() for p in model.parameters()]
    rows = [(torch.randn(3), torch.tensor(i % 2)) for i in range(10)]

    def loss_fn(m, batch):
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    twin, record = relearned_copy(model, rows, epochs=3, lr=0.1, batch_size=2, seed=0, collate_fn=None,
                                  max_passes=6, loss_fn=loss_fn)  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(before, twin.parameters(), strict=True))
    assert record["stop_reason"] == "budget" and record["cost"]["example_passes"] <= 6
