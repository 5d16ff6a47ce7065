"""Example-pass cost counting: the oracle, the first-order methods, retraining, tasks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from dist_unlearn.api import unlearn
from dist_unlearn.curvature import LocalOracle


def ce(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


class Counting(nn.Module):
    """A tiny MLP that records every example its forward sees, split by whether autograd is on."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        self.seen = {"grad": 0, "no_grad": 0}

    def forward(self, x):
        self.seen["grad" if torch.is_grad_enabled() else "no_grad"] += x.shape[0]
        return self.net(x)


@pytest.fixture
def data():
    torch.manual_seed(0)
    X = torch.randn(26, 3, dtype=torch.float64)
    y = (X[:, 0] > 0).long()
    return TensorDataset(X[6:], y[6:]), TensorDataset(X[:6], y[:6])


@pytest.mark.parametrize(("mode", "weight", "forwards_per_hvp"), [("exact", 3, 1), ("fd", 2, 2)])
def test_oracle_cost_matches_a_hand_count(data, mode, weight, forwards_per_hvp):
    retain, _ = data
    n = len(retain)  # 20 examples, chunks of 7 (7 + 7 + 6)
    model = Counting()
    oracle = LocalOracle(model, ce, retain, hvp=mode, batch_size=7)
    v = tuple(torch.ones_like(p) for p in oracle.params)
    oracle.loss()
    oracle.loss()
    oracle.loss_and_gradient()
    for _ in range(3):
        oracle.hvp(v)
    # hand count: 2 forward-only passes over n (1/3 each), 1 gradient (1), 3 HVPs (weight each)
    expected = 2 * n / 3 + n + 3 * weight * n
    cost = oracle.cost.as_dict()
    assert cost["example_passes"] == pytest.approx(expected)
    assert cost["by_kind"][f"hvp_{mode}"]["calls"] == 3
    assert cost["by_kind"][f"hvp_{mode}"]["examples"] == 3 * n
    # and the model really saw that many examples
    assert model.seen["no_grad"] == 2 * n
    assert model.seen["grad"] == n + 3 * forwards_per_hvp * n


def test_hvp_subsample_counts_only_its_examples(data):
    retain, _ = data
    oracle = LocalOracle(Counting(), ce, retain, hvp_batch_size=5)
    oracle.hvp(tuple(torch.ones_like(p) for p in oracle.params))
    assert oracle.cost.as_dict()["example_passes"] == pytest.approx(3 * 5)


def test_cure_newton_stats_carry_the_oracle_cost(data):
    retain, forget = data
    n = len(retain)
    res = unlearn(Counting(), ce, retain, forget, method="cure_newton", max_steps=2, M=1.0)
    st = res.stats
    by = st["cost"]["by_kind"]
    assert by["gradient"]["calls"] == st["total_gradients"]
    assert by["hvp_exact"]["calls"] == st["total_hvps"]
    assert st["cost"]["example_passes"] == pytest.approx(
        n * (st["total_gradients"] + 3 * st["total_hvps"] + (st["total_losses"] - st["total_gradients"]) / 3)
    )


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("finetune", lambda n_r, n_f: 2 * n_r),  # 2 epochs over the retain set
        ("retrain", lambda n_r, n_f: 2 * n_r),
        ("grad_ascent", lambda n_r, n_f: 2 * n_f),
        # one retain batch (4) paired with each forget batch (4 + 2), two epochs
        ("grad_diff", lambda n_r, n_f: 2 * (n_f + 8)),
        # NPO without a retain term: forget steps + the reference model's forward (1/3)
        ("npo", lambda n_r, n_f: 2 * n_f * (1 + 1 / 3)),
    ],
)
def test_first_order_cost_is_examples_per_step(data, method, expected):
    retain, forget = data
    opts = {"epochs": 2, "batch_size": 4, "lr": 1e-3}
    if method == "npo":
        opts["retain_weight"] = 0.0
    res = unlearn(Counting(), ce, retain, forget, method=method, **opts)
    assert res.stats["cost"]["example_passes"] == pytest.approx(expected(len(retain), len(forget)))


def test_scrub_counts_student_steps_and_teacher_forwards(data):
    retain, forget = data
    res = unlearn(Counting(), ce, retain, forget, method="scrub", epochs=2, forget_epochs=1, batch_size=4)
    by = res.stats["cost"]["by_kind"]
    n_r, n_f = len(retain), len(forget)
    assert by["train_step"]["examples"] == n_f + 2 * n_r
    assert by["loss"]["examples"] == n_f + 2 * n_r  # one teacher forward per student step


def test_task_training_cost():
    from dist_unlearn.tasks.base import Task, TrainRecipe

    cost = Task.training_cost(100, TrainRecipe(epochs=3, lr=1e-3, batch_size=32))
    assert cost["example_passes"] == 300
    assert cost["by_kind"]["train_step"]["calls"] == 3 * 4
