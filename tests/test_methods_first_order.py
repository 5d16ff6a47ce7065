"""First-order baselines and retraining on a tiny classifier, checked against direct computations."""

from __future__ import annotations

import math

import datasets
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from dist_unlearn.api import unlearn
from dist_unlearn.errors import NumericalError
from dist_unlearn.methods.first_order import distill_kl
from dist_unlearn.models.losses import per_example_losses
from dist_unlearn.options import UnlearnOptions


def ce(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def make_model(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def full_loss(model, data) -> float:
    x, y = data.tensors
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    X = torch.randn(80, 4)
    y = (X[:, :3] + 0.3 * torch.randn(80, 3)).argmax(1)
    model = make_model()
    for _ in range(150):  # plain GD training of the "original" model
        grads = torch.autograd.grad(F.cross_entropy(model(X), y), list(model.parameters()))
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads, strict=True):
                p -= 0.5 * g
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return model, state, TensorDataset(X[16:], y[16:]), TensorDataset(X[:16], y[:16])


def fresh(setup):
    model, state, retain, forget = setup
    model.load_state_dict(state)
    return model, retain, forget


def test_finetune_lowers_the_retain_loss(setup):
    model, retain, forget = fresh(setup)
    before = full_loss(model, retain)
    res = unlearn(model, ce, retain, forget, method="finetune", epochs=3, lr=1e-2, batch_size=16)
    assert len(res.steps) == 3 * math.ceil(len(retain) / 16)
    assert full_loss(model, retain) < before
    assert res.stats["final_loss"] == pytest.approx(full_loss(model, retain), rel=1e-5)
    assert res.stats["total_hvps"] == 0 and res.stats["total_gradients"] == len(res.steps)


def test_grad_ascent_raises_the_forget_loss_without_a_retain_set(setup):
    model, retain, forget = fresh(setup)
    before = full_loss(model, forget)
    w0 = flat(model)
    res = unlearn(model, ce, None, forget, method="grad_ascent", epochs=2, lr=1e-2, batch_size=8)
    assert full_loss(model, forget) > before + 0.05
    assert res.stats["final_loss"] is None  # no retain set given
    assert all(s.loss < 0 for s in res.steps)  # the objective is -loss
    assert res.stats["update_norm"] == pytest.approx(float((flat(model) - w0).norm()), rel=1e-5)


def test_grad_diff_raises_forget_loss_more_than_retain_loss(setup):
    model, retain, forget = fresh(setup)
    f0, r0 = full_loss(model, forget), full_loss(model, retain)
    unlearn(model, ce, retain, forget, method="grad_diff", epochs=3, lr=1e-2, batch_size=8)
    assert full_loss(model, forget) - f0 > 2 * (full_loss(model, retain) - r0)
    assert full_loss(model, forget) > f0


def test_npo_starts_at_2_log2_over_beta_and_pushes_forget_loss_up(setup):
    model, retain, forget = fresh(setup)
    f0 = full_loss(model, forget)
    beta = 0.5
    res = unlearn(model, ce, retain, forget, method="npo", beta=beta, retain_weight=0.0, epochs=3, lr=1e-2,
                  batch_size=8)  # fmt: skip
    assert res.steps[0].loss == pytest.approx(2 / beta * math.log(2), rel=1e-6)  # theta = reference at start
    assert full_loss(model, forget) > f0
    assert [s.loss for s in res.steps][-1] < res.steps[0].loss  # the NPO objective decreased


def test_per_example_losses_for_dataset_losses():
    from dist_unlearn.models import ClassificationLoss

    model = make_model()
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 1, 0])
    loss = ClassificationLoss()
    got = per_example_losses(loss, model, {"input": x, "label": y})
    assert torch.allclose(got, F.cross_entropy(model(x), y, reduction="none"), atol=1e-6)
    # a plain loss_fn(model, batch) -> batch mean: one call per row
    plain = per_example_losses(ce, model, (x, y))
    assert torch.allclose(plain, F.cross_entropy(model(x), y, reduction="none"), atol=1e-6)


def test_npo_with_a_datasets_dataset_and_default_forward(setup):
    from dist_unlearn.models import ClassificationLoss

    model, retain, forget = fresh(setup)
    rows = datasets.Dataset.from_dict(
        {"input": forget.tensors[0].tolist(), "label": forget.tensors[1].tolist()}
    )
    f0 = full_loss(model, forget)
    unlearn(model, ClassificationLoss(), None, rows, method="npo", epochs=3, lr=1e-2, batch_size=8,
            retain_weight=0.0)  # fmt: skip
    assert full_loss(model, forget) > f0


def test_distill_kl_matches_the_definition():
    s, t = torch.randn(6, 3), torch.randn(6, 3)
    T = 2.0
    p = F.softmax(t / T, -1)
    ref = (p * (p.log() - F.log_softmax(s / T, -1))).sum(-1).mean() * T**2
    assert float(distill_kl(s, t, T)) == pytest.approx(float(ref), rel=1e-5)


def test_scrub_moves_the_student_away_from_the_teacher_on_the_forget_set(setup):
    model, retain, forget = fresh(setup)
    teacher = make_model()
    teacher.load_state_dict(model.state_dict())
    f0 = full_loss(model, forget)
    res = unlearn(model, ce, retain, forget, method="scrub", epochs=2, forget_epochs=1, lr=1e-2, batch_size=8,
                  temperature=1.0)  # fmt: skip
    with torch.no_grad():
        kl_f = float(distill_kl(model(forget.tensors[0]), teacher(forget.tensors[0]), 1.0))
        kl_r = float(distill_kl(model(retain.tensors[0]), teacher(retain.tensors[0]), 1.0))
    assert kl_f > kl_r
    assert full_loss(model, forget) > f0
    # epoch 0: 2 max-steps (16 forget / 8) + 8 min-steps (64 retain / 8); epoch 1: 8 min-steps
    assert len(res.steps) == 2 + 8 + 8 and res.stats["forget_epochs"] == 1


def test_retrain_with_model_init_returns_a_new_trained_model(setup):
    model, retain, forget = fresh(setup)
    w_orig = flat(model)
    res = unlearn(model, ce, retain, forget, method="retrain", model_init=lambda: make_model(5), epochs=20,
                  lr=1e-2, batch_size=16)  # fmt: skip
    assert res.model is not model
    assert torch.equal(flat(model), w_orig)  # the given model is untouched
    assert full_loss(res.model, retain) < full_loss(make_model(5), retain) - 0.3
    assert res.stats["update_norm"] == pytest.approx(float((flat(res.model) - w_orig).norm()), rel=1e-5)


def test_retrain_default_reinitialises_with_the_seed(setup):
    model, retain, forget = fresh(setup)
    # max_steps=0 is refused: the starting point of retrain is the method's own re-initialisation
    from dist_unlearn.methods.retrain import _fresh_model

    start = _fresh_model(model, UnlearnOptions(seed=11))
    ref = make_model()
    torch.manual_seed(11)
    for m in ref.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    assert torch.equal(flat(start), flat(ref))
    assert not torch.equal(flat(start), flat(model))


def test_max_steps_caps_optimiser_steps(setup):
    model, retain, forget = fresh(setup)
    res = unlearn(model, ce, retain, forget, method="finetune", epochs=5, max_steps=3, batch_size=8)
    assert len(res.steps) == 3 and res.stats["stop_reason"] == "max_steps"


def test_nan_objective_restores_the_last_good_weights_and_raises(setup):
    model, retain, forget = fresh(setup)
    unlearn(model, ce, retain, forget, method="finetune", max_steps=1, lr=1e-2, batch_size=8)
    w1 = flat(model)
    calls = {"n": 0}

    def poisoned(m, batch):  # the 3rd training evaluation (forward-only evidence passes do not count)
        calls["n"] += torch.is_grad_enabled()
        value = ce(m, batch)
        return value * math.nan if calls["n"] == 3 and torch.is_grad_enabled() else value

    model, retain, forget = fresh(setup)
    with pytest.raises(NumericalError, match="restored"):
        unlearn(model, poisoned, retain, forget, method="finetune", lr=1e-2, batch_size=8)
    assert torch.equal(flat(model), w1)  # step 2 found NaN at w2: back to w1, whose loss/gradient were finite
