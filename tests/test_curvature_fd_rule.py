"""The finite-difference step rule (curvature.hvp_fd) against the float64 exact HVP (double backward).

The models are float32 (what the FD HVP is for); the reference is the same model in float64. Directions are
those cure_newton applies H to: the gradient and a Lanczos vector of it. Bounds are ~2x the errors measured
by benchmarks/fd_error_curve.py for these models and directions.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dist_unlearn.curvature import LocalOracle, fd_epsilon
from dist_unlearn.curvature.hvp_fd import perturbation_size
from dist_unlearn.linalg import TensorSpace


def mlp_zero_loss():
    """A 20-64-5 tanh MLP trained to near-zero loss on 240 rows of 5 Gaussian classes."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    centers = 1.2 * torch.randn(5, 20, generator=g)
    y = torch.randint(0, 5, (240,), generator=g)
    x = centers[y] + torch.randn(240, 20, generator=g)
    model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 5))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    def loss_fn(m, batch):
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    return model, loss_fn, TensorDataset(x, y)


def gpt2_small():
    """A 2-layer, 64-wide GPT-2 from a config, 40 Adam steps on 32 rows of random tokens."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_positions=64, bos_token_id=511,
                     eos_token_id=511, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    model = GPT2LMHeadModel(cfg)
    model.config._attn_implementation = "eager"
    ids = torch.randint(0, 512, (32, 32), generator=torch.Generator().manual_seed(0))

    def loss_fn(m, batch):
        (tokens,) = batch
        logits = m(input_ids=tokens).logits[:, :-1]
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        opt.zero_grad()
        loss_fn(model, (ids,)).backward()
        opt.step()
    return model.eval(), loss_fn, TensorDataset(ids)


def rel(a, b) -> float:
    fa = torch.cat([t.reshape(-1).double() for t in a])
    fb = torch.cat([t.reshape(-1).double() for t in b])
    return float((fa - fb).norm() / fb.norm())


@pytest.mark.parametrize("case,bound", [(mlp_zero_loss, 5e-3), (gpt2_small, 1e-3)])
def test_fd_rule_within_bound_of_float64_exact_hvp(case, bound):
    model, loss_fn, data = case()
    fd = LocalOracle(model, loss_fn, data, hvp="fd", batch_size=len(data))
    exact = LocalOracle(
        copy.deepcopy(model).double(), loss_fn, _as64(data), hvp="exact", batch_size=len(data)
    )
    space = TensorSpace()
    _, g = exact.loss_and_gradient()
    q = space.scale(1.0 / space.norm(g), space.copy(g))
    directions = [q]
    q_prev, beta = None, 0.0
    for _ in range(3):  # Lanczos in float64 on the exact Hessian: q_4
        w = exact.hvp(q)
        alpha = space.dot(q, w)
        w = space.axpy(-alpha, q, w)
        if q_prev is not None:
            w = space.axpy(-beta, q_prev, w)
        beta = space.norm(w)
        q_prev, q = q, space.scale(1.0 / beta, w)
    directions.append(q)
    for v in directions:
        hv_fd = fd.hvp(tuple(t.float() for t in v))
        assert rel(hv_fd, exact.hvp(v)) < bound
    # the step the oracle took is the rule's: h = u^(1/3) max(1, rms w) for a unit v
    w = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
    h = perturbation_size(torch.float32, float(w.norm() / w.numel() ** 0.5))
    assert fd.last_fd_eps == pytest.approx(h, rel=1e-5)
    assert fd_epsilon(torch.float32, float(w.norm()), 2.0, w.numel()) == pytest.approx(h / 2.0)


def _as64(data: TensorDataset) -> TensorDataset:
    return TensorDataset(*(t.double() if t.is_floating_point() else t for t in data.tensors))
