"""The objectives of the curvature methods against autograd on a tiny model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.data import TensorDataset

from dist_unlearn.api import unlearn
from dist_unlearn.curvature.objective import build_oracle


def ce(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


@pytest.fixture
def setup():
    torch.manual_seed(0)
    X = torch.randn(30, 3, dtype=torch.float64)
    y = (X[:, 0] + 0.3 * X[:, 1] > 0).long()
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    return net, (X[8:], y[8:]), (X[:8], y[:8])


def flat_fn(net, f):
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    sizes = [p.numel() for _, p in net.named_parameters()]

    def fn(w):
        params = {n: t.reshape(s) for n, t, s in zip(names, torch.split(w, sizes), shapes, strict=True)}
        return f(lambda x: functional_call(net, params, (x,)))

    return fn


def reference(net, retain, forget, objective, alpha, beta, ref_losses):
    (Xr, yr), (Xf, yf) = retain, forget

    def f(fwd):
        lr = F.cross_entropy(fwd(Xr), yr)
        if objective == "grad_diff":
            return lr - alpha * F.cross_entropy(fwd(Xf), yf)
        li = F.cross_entropy(fwd(Xf), yf, reduction="none")
        return lr + alpha * (2 / beta) * F.softplus(beta * (ref_losses - li)).mean()

    return flat_fn(net, f)


def flat(vs):
    return torch.cat([v.reshape(-1) for v in vs])


@pytest.mark.parametrize("objective", ["grad_diff", "npo"])
def test_objective_gradient_and_hvp_match_autograd(setup, objective):
    net, retain, forget = setup
    w0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    with torch.no_grad():
        ref_losses = F.cross_entropy(net(forget[0]), forget[1], reduction="none")
    alpha, beta = 0.7, 0.5
    oracle = build_oracle(
        net, ce, TensorDataset(*retain), TensorDataset(*forget), objective=objective, forget_weight=alpha,
        beta=beta, batch_size=5,
    )  # fmt: skip
    # move away from w0 so the NPO reference differs from the current losses
    torch.manual_seed(1)
    delta = tuple(0.3 * torch.randn_like(p) for p in oracle.params)
    oracle.apply_update(delta)
    w = w0 + flat(delta)
    f = reference(net, retain, forget, objective, alpha, beta, ref_losses)
    loss, g = oracle.loss_and_gradient()
    wr = w.clone().requires_grad_(True)
    value = f(wr).detach()
    (g_ref,) = torch.autograd.grad(f(wr), wr)
    assert loss == pytest.approx(float(value), rel=1e-12)
    assert oracle.loss() == pytest.approx(float(value), rel=1e-12)
    assert torch.allclose(flat(g), g_ref, rtol=1e-10, atol=1e-12)
    v = tuple(torch.randn_like(p) for p in oracle.params)
    _, hv_ref = torch.autograd.functional.hvp(f, w, flat(v))
    assert torch.allclose(flat(oracle.hvp(v)), hv_ref, rtol=1e-9, atol=1e-11)
    # updates go through once (shared weights) and restore is exact
    snap = oracle.snapshot()
    oracle.apply_update(v)
    oracle.restore(snap)
    assert torch.allclose(torch.cat([p.detach().reshape(-1) for p in net.parameters()]), w, rtol=0, atol=0)


def test_influence_gradient_is_the_stationary_point_identity(setup):
    net, retain, forget = setup
    Xa, ya = torch.cat([retain[0], forget[0]]), torch.cat([retain[1], forget[1]])
    # train to a stationary point of the full L2-regularised loss
    lam = 1e-2
    opt = torch.optim.LBFGS(net.parameters(), max_iter=500, tolerance_grad=1e-13, tolerance_change=0,
                            line_search_fn="strong_wolfe")  # fmt: skip

    def l2(m):
        return 0.5 * lam * sum((p * p).sum() for p in m.parameters())

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(net(Xa), ya) + l2(net)
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)

    def reg(model, batch):
        return ce(model, batch) + l2(model)

    oracle = build_oracle(net, reg, TensorDataset(*retain), TensorDataset(*forget), gradient="influence")
    _, g_infl = oracle.loss_and_gradient()
    grads = torch.autograd.grad(reg(net, retain), list(net.parameters()))
    g_true = torch.cat([t.reshape(-1) for t in grads])
    assert torch.allclose(flat(g_infl), g_true, rtol=1e-5, atol=1e-8)
    by = oracle.cost.as_dict()["by_kind"]
    assert by["gradient"]["examples"] == len(forget[0])  # one pass over the forget set only
    _, g_next = oracle.loss_and_gradient()  # later steps: the true retain gradient
    assert torch.allclose(flat(g_next), g_true, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("objective", ["grad_diff", "npo"])
def test_forget_objectives_raise_the_forget_loss_of_a_memorising_model(setup, objective):
    net, retain, forget = setup
    Xf, yf = forget
    yf = 1 - yf  # flipped labels the net will memorise
    X, y = torch.cat([retain[0], Xf]), torch.cat([retain[1], yf])
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(800):
        opt.zero_grad()
        F.cross_entropy(net(X), y).backward()
        opt.step()
    f0 = float(F.cross_entropy(net(Xf), yf))
    r0 = unlearn(net, ce, TensorDataset(*retain), TensorDataset(Xf, yf),
                 method="cure_newton", objective=objective, max_steps=5)  # fmt: skip
    f1 = float(F.cross_entropy(net(Xf), yf))
    assert f1 > f0 + 0.5, (f0, f1)
    assert r0.stats["objective"] == objective
    assert r0.stats["cost"]["example_passes"] > 0
