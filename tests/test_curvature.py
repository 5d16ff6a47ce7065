"""LocalOracle on a tiny float64 MLP against dense references (autograd hessian, explicit J^T H J)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dist_unlearn.curvature import LocalOracle, check_determinism, fd_epsilon
from dist_unlearn.errors import ConfigError, DataError, ModelError, NumericalError
from dist_unlearn.models import ClassificationLoss

torch.set_num_threads(1)
N, D, HID, C = 10, 3, 4, 3


def make_model(dtype=torch.float64, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, HID), nn.Tanh(), nn.Linear(HID, C)).to(dtype)


def make_data(dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g, dtype=dtype)
    y = torch.randint(0, C, (N,), generator=g)
    return x, y


def flat_fns(model, x, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def unflat(w):
        return {n: t.view(s) for n, t, s in zip(names, torch.split(w, sizes), shapes, strict=True)}

    def logits(w):
        return torch.func.functional_call(model, unflat(w), (x,))

    def loss(w):
        return F.cross_entropy(logits(w), y)

    return w0, loss, logits, sizes


def to_tuple(flat, sizes, shapes):
    return tuple(t.view(s) for t, s in zip(torch.split(flat, sizes), shapes, strict=True))


def flat(vec):
    return torch.cat([t.reshape(-1) for t in vec])


@pytest.fixture
def setup():
    model = make_model()
    x, y = make_data()
    w0, loss, logits, sizes = flat_fns(model, x, y)
    H = torch.autograd.functional.hessian(loss, w0)
    shapes = [p.shape for p in model.parameters()]
    v = torch.randn(w0.numel(), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return dict(model=model, x=x, y=y, w0=w0, loss=loss, logits=logits, H=H, sizes=sizes, shapes=shapes, v=v)


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("batch_size", [3, 4, 10, 64])
def test_exact_hvp_matches_dense_hessian_for_any_chunking(setup, batch_size):
    s = setup
    oracle = LocalOracle(
        s["model"], ClassificationLoss(), TensorDataset(s["x"], s["y"]), batch_size=batch_size
    )
    hv = oracle.hvp(to_tuple(s["v"], s["sizes"], s["shapes"]))
    assert rel(flat(hv), s["H"] @ s["v"]) < 1e-12
    g_ref = torch.autograd.functional.jacobian(s["loss"], s["w0"])
    loss, g = oracle.loss_and_gradient()
    assert abs(loss - float(s["loss"](s["w0"]))) < 1e-12
    assert rel(flat(g), g_ref) < 1e-12
    assert oracle.counters["hvps"] == 1 and oracle.counters["gradients"] == 1


def test_fd_hvp_float64_matches_dense_hessian_and_restores_weights_exactly(setup):
    s = setup
    oracle = LocalOracle(
        s["model"], ClassificationLoss(), TensorDataset(s["x"], s["y"]), hvp="fd", batch_size=4
    )
    before = [p.detach().clone() for p in s["model"].parameters()]
    hv = oracle.hvp(to_tuple(s["v"], s["sizes"], s["shapes"]))
    assert rel(flat(hv), s["H"] @ s["v"]) < 1e-7
    assert all(torch.equal(a, b) for a, b in zip(before, s["model"].parameters(), strict=True))
    # eps follows precision and norms, not a constant
    wn, vn = float(s["w0"].norm()), float(s["v"].norm())
    assert oracle.last_fd_eps == pytest.approx(fd_epsilon(torch.float64, wn, vn, s["w0"].numel()))
    assert oracle.counters["fd_gradients"] == 2 and oracle.counters["gradients"] == 0


def test_fd_hvp_float32_model_close_to_float64_reference(setup):
    s = setup
    m32 = make_model(torch.float32)
    oracle = LocalOracle(m32, ClassificationLoss(), TensorDataset(s["x"].float(), s["y"]), hvp="fd")
    hv = oracle.hvp(to_tuple(s["v"].float(), s["sizes"], s["shapes"]))
    assert hv[0].dtype == torch.float32
    assert rel(flat(hv).double(), s["H"] @ s["v"]) < 2e-3
    assert fd_epsilon(torch.float32, 1.0, 1.0, 1) > 100 * fd_epsilon(torch.float64, 1.0, 1.0, 1)


def test_fd_restores_weights_when_the_gradient_fails(setup):
    s = setup
    calls = {"n": 0}

    def flaky(model, batch):
        calls["n"] += 1
        if calls["n"] > 1:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return ClassificationLoss()(model, batch)

    before = [p.detach().clone() for p in s["model"].parameters()]
    oracle = LocalOracle(s["model"], flaky, TensorDataset(s["x"], s["y"]), hvp="fd", batch_size=10)
    with pytest.raises(NumericalError, match="non-finite"):
        oracle.hvp(to_tuple(s["v"], s["sizes"], s["shapes"]))
    assert all(torch.equal(a, b) for a, b in zip(before, s["model"].parameters(), strict=True))


def test_ggn_matches_dense_gauss_newton(setup):
    s = setup
    J = torch.autograd.functional.jacobian(s["logits"], s["w0"])  # (N, C, P)
    p = torch.softmax(s["logits"](s["w0"]), dim=-1)
    G = sum(J[i].T @ (torch.diag(p[i]) - torch.outer(p[i], p[i])) @ J[i] for i in range(N)) / N
    oracle = LocalOracle(
        s["model"], ClassificationLoss(), TensorDataset(s["x"], s["y"]), hvp="ggn", batch_size=4
    )
    gv = oracle.hvp(to_tuple(s["v"], s["sizes"], s["shapes"]))
    assert rel(flat(gv), G @ s["v"]) < 1e-12
    assert torch.linalg.eigvalsh(G).min() > -1e-12  # PSD, unlike H
    assert rel(G @ s["v"], s["H"] @ s["v"]) > 1e-3  # and a genuinely different matrix


def test_ggn_needs_a_loss_exposing_outputs(setup):
    s = setup
    with pytest.raises(ConfigError, match="outputs"):
        LocalOracle(s["model"], lambda m, b: m(b[0]).sum(), TensorDataset(s["x"], s["y"]), hvp="ggn")


def test_data_forms_give_the_same_results(setup):
    import datasets

    s = setup
    v = to_tuple(s["v"], s["sizes"], s["shapes"])
    ref = s["H"] @ s["v"]
    hf = datasets.Dataset.from_dict({"input": s["x"].numpy(), "label": s["y"].numpy()})
    hf = hf.with_format("torch", dtype=torch.float64)  # datasets casts floats to float32 unless told
    loader = DataLoader(TensorDataset(s["x"], s["y"]), batch_size=3, shuffle=True)
    for data in (hf, loader, [(s["x"][i], s["y"][i]) for i in range(N)]):
        oracle = LocalOracle(s["model"], ClassificationLoss(), data)
        assert rel(flat(oracle.hvp(v)), ref) < 1e-12


def test_stochastic_sample_fixed_until_resample(setup):
    s = setup
    oracle = LocalOracle(
        s["model"],
        ClassificationLoss(),
        TensorDataset(s["x"], s["y"]),
        grad_batch_size=4,
        hvp_batch_size=3,
        seed=7,
        batch_size=2,
    )
    idx = list(oracle.grad_indices)
    assert len(idx) == 4 and len(oracle.hvp_indices) == 3
    _, _, _, _ = flat_fns(s["model"], s["x"][idx], s["y"][idx])
    w0, loss_sub, _, _ = flat_fns(s["model"], s["x"][idx], s["y"][idx])
    g_ref = torch.autograd.functional.jacobian(loss_sub, w0)
    g1, g2 = flat(oracle.gradient()), flat(oracle.gradient())
    assert torch.equal(g1, g2) and rel(g1, g_ref) < 1e-12
    hidx = list(oracle.hvp_indices)
    _, loss_h, _, _ = flat_fns(s["model"], s["x"][hidx], s["y"][hidx])
    Hs = torch.autograd.functional.hessian(loss_h, w0)
    assert rel(flat(oracle.hvp(to_tuple(s["v"], s["sizes"], s["shapes"]))), Hs @ s["v"]) < 1e-12
    oracle.resample(8)
    other = list(oracle.grad_indices)
    oracle.resample(7)
    assert oracle.grad_indices == idx and other != idx


def test_update_snapshot_restore_and_determinism(setup):
    s = setup
    oracle = LocalOracle(s["model"], ClassificationLoss(), TensorDataset(s["x"], s["y"]))
    snap = oracle.snapshot()
    d = to_tuple(s["v"], s["sizes"], s["shapes"])
    oracle.apply_update(d, scale=0.5)
    assert rel(flat(oracle.parameters_vector()), s["w0"] + 0.5 * s["v"]) < 1e-15
    oracle.restore(snap)
    assert torch.equal(flat(oracle.parameters_vector()), s["w0"])
    report = check_determinism(oracle, rtol=0.0)
    assert report.passed and report.max_relative_difference == 0.0


def test_determinism_check_catches_a_noisy_loss(setup):
    s = setup

    def noisy(model, batch):
        return ClassificationLoss()(model, batch) * (1 + 1e-3 * torch.rand(()).double())

    oracle = LocalOracle(s["model"], noisy, TensorDataset(s["x"], s["y"]))
    with pytest.raises(NumericalError, match="not deterministic"):
        check_determinism(oracle)


def test_model_put_in_eval_mode_dropout_off():
    x, y = make_data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, HID), nn.Dropout(0.5), nn.Linear(HID, C)).double().train()
    oracle = LocalOracle(model, ClassificationLoss(), TensorDataset(x, y))
    assert not model.training
    assert torch.equal(flat(oracle.gradient()), flat(oracle.gradient()))


def test_bad_inputs(setup):
    s = setup
    data = TensorDataset(s["x"], s["y"])
    with pytest.raises(ConfigError, match="exat.*Did you mean 'exact'"):
        LocalOracle(s["model"], ClassificationLoss(), data, hvp="exat")
    with pytest.raises(ConfigError, match="batch_size=0"):
        LocalOracle(s["model"], ClassificationLoss(), data, batch_size=0)
    with pytest.raises(DataError, match="empty"):
        LocalOracle(s["model"], ClassificationLoss(), TensorDataset(s["x"][:0], s["y"][:0]))
    frozen = make_model().requires_grad_(False)
    with pytest.raises(ModelError, match="no trainable"):
        LocalOracle(frozen, ClassificationLoss(), data)
    x_nan = s["x"].clone()
    x_nan[3, 0] = float("nan")
    bad = LocalOracle(s["model"], ClassificationLoss(), TensorDataset(x_nan, s["y"]), batch_size=4)
    for call in (bad.loss, bad.gradient, lambda: bad.hvp(bad.space.zeros_like(tuple(bad.params)))):
        with pytest.raises(NumericalError, match="chunk 0"):
            call()
    oracle = LocalOracle(s["model"], ClassificationLoss(), data)
    v = list(to_tuple(s["v"].clone(), s["sizes"], s["shapes"]))
    v[1] = v[1].clone()
    v[1][0] = float("inf")
    with pytest.raises(NumericalError, match="direction"):
        oracle.hvp(tuple(v))
    with pytest.raises(ValueError, match="shape"):
        oracle.hvp(tuple(reversed(v)))


def test_low_precision_model_keeps_fp32_master_weights():
    torch.manual_seed(0)
    model = nn.Linear(2, 2).to(torch.bfloat16)
    x = torch.randn(6, 2).to(torch.bfloat16)
    y = torch.randint(0, 2, (6,))
    oracle = LocalOracle(model, ClassificationLoss(), TensorDataset(x, y), hvp="fd")
    w0 = oracle.parameters_vector()
    assert all(t.dtype == torch.float32 for t in w0) and oracle.gradient()[0].dtype == torch.float32
    step = tuple(torch.full_like(t, 1e-4) for t in w0)
    for _ in range(100):  # each step is far below bf16 resolution; the fp32 master accumulates them
        oracle.apply_update(step)
    moved = flat(oracle.parameters_vector()) - flat(w0)
    assert torch.allclose(moved, torch.full_like(moved, 1e-2), rtol=1e-3)
    assert torch.isfinite(flat(oracle.hvp(step))).all()
