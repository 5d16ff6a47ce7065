"""The ``max_example_passes`` cost cap: respected by every method, stop_reason "budget", bad values
rejected, and the solver's stop hook ends a solve exactly where max_iter would."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_solvers_reference import random_problem, torch_matvec
from torch import nn
from torch.utils.data import TensorDataset

from dist_unlearn.api import unlearn
from dist_unlearn.errors import ConfigError
from dist_unlearn.options import UnlearnOptions
from dist_unlearn.solvers import cubic_subproblem, extreme_eigenvalues

N_RETAIN, N_FORGET = 40, 8


def ce(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y) + 1e-3 * sum((p * p).sum() for p in model.parameters())


def tiny() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()


@pytest.fixture
def data():
    torch.manual_seed(0)
    X = torch.randn(N_RETAIN + N_FORGET, 4, dtype=torch.float64)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()
    return TensorDataset(X[N_FORGET:], y[N_FORGET:]), TensorDataset(X[:N_FORGET], y[:N_FORGET])


def _run(data, method, **opts):
    retain, forget = data
    return unlearn(tiny(), ce, retain, forget, method=method, batch_size=64, **opts)


CURVATURE_CASES = [
    ("cure_newton", {}, 3 * N_RETAIN),  # ARC, first-M search, M0 estimate; HVP on all 40 examples
    ("cure_newton", {"M": 1.0, "max_steps": 20}, 3 * N_RETAIN),
    ("cure_newton", {"hvp": "fd", "hvp_sample": 16}, 2 * 16),
    ("cure_newton_stochastic", {"grad_batch_size": 16, "hvp_batch_size": 8}, 3 * 8),
    ("cure_newton_stochastic", {"cubic_solver": "gd", "grad_batch_size": 16, "hvp_batch_size": 8}, 3 * 8),
    ("cure_newton", {"objective": "grad_diff", "forget_weight": 0.1}, 3 * (N_RETAIN + N_FORGET)),
    ("cure_newton", {"gradient": "influence", "hvp_sample": 16}, 3 * 16),  # first gradient: forget set
    ("cure_newton", {"objective": "npo", "forget_weight": 0.1, "hvp_sample": 8}, 3 * (8 + N_FORGET)),
    ("damped_newton", {"max_steps": 3}, 3 * N_RETAIN),
]


@pytest.mark.parametrize(("method", "opts", "hvp_cost"), CURVATURE_CASES)
@pytest.mark.parametrize("fraction", [0.15, 0.5])
def test_curvature_methods_respect_the_cap(data, method, opts, hvp_cost, fraction):
    free = _run(data, method, **opts)
    full = free.stats["cost"]["example_passes"]
    cap = fraction * full
    capped = _run(data, method, max_example_passes=cap, **opts)
    spent = capped.stats["cost"]["example_passes"]
    assert capped.stats["stop_reason"] == "budget"
    assert spent <= cap + hvp_cost + 1e-9, (spent, cap, hvp_cost)  # the documented bound
    # the local oracles predict every operation exactly or from above (hvp_pass_cost), so no overshoot at all
    assert spent <= cap + 1e-9, (spent, cap)
    assert spent < full
    assert capped.stats["options"]["max_example_passes"] == cap


def test_cap_above_the_runs_cost_changes_nothing(data):
    free = _run(data, "cure_newton")
    full = free.stats["cost"]["example_passes"]
    capped = _run(data, "cure_newton", max_example_passes=10 * full)
    assert capped.stats["stop_reason"] == free.stats["stop_reason"] != "budget"
    assert capped.stats["cost"]["example_passes"] == pytest.approx(full)
    for p, q in zip(free.model.parameters(), capped.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_cap_below_one_step_leaves_the_weights(data):
    res = _run(data, "cure_newton", max_example_passes=30.0)  # one gradient = 40 passes
    assert res.stats["stop_reason"] == "budget"
    assert res.stats["accepted_steps"] == 0
    assert res.stats["update_norm"] == 0.0
    assert res.stats["cost"]["example_passes"] <= 30.0 + N_RETAIN  # the one gradient that showed it


@pytest.mark.parametrize(
    ("method", "opts"),
    [
        ("finetune", {"epochs": 5}),
        ("npo", {"epochs": 20}),
        ("grad_diff", {"epochs": 20}),
        ("retrain", {"epochs": 5}),
    ],
)
def test_first_order_methods_respect_the_cap(data, method, opts):
    retain, forget = data
    free = unlearn(tiny(), ce, retain, forget, method=method, batch_size=8, **opts)
    full = free.stats["cost"]["example_passes"]
    cap = 0.4 * full
    capped = unlearn(tiny(), ce, retain, forget, method=method, batch_size=8, max_example_passes=cap, **opts)
    spent = capped.stats["cost"]["example_passes"]
    assert capped.stats["stop_reason"] == "budget"
    assert spent <= cap + 1e-9
    assert spent >= cap - 2 * full / len(free.steps)  # stopped at the cap, not long before it
    assert len(capped.steps) < len(free.steps)


@pytest.mark.parametrize("bad", [0, -5.0, math.inf, math.nan, True, "100"])
def test_bad_caps_are_config_errors(bad):
    with pytest.raises(ConfigError, match="max_example_passes"):
        UnlearnOptions(max_example_passes=bad)


def test_solver_stop_hook_ends_the_solve_like_max_iter():
    H, g = random_problem("indefinite", 60, seed=2)
    g = torch.from_numpy(g)
    seen: list[int] = []

    def stop(k: int) -> bool:
        seen.append(k)
        return k >= 5

    hooked = cubic_subproblem(torch_matvec(H), g, 0.5, tol=1e-30, max_iter=40, stop=stop)
    plain = cubic_subproblem(torch_matvec(H), g, 0.5, tol=1e-30, max_iter=5)
    assert hooked.hvps == 5 and seen == [1, 2, 3, 4, 5]
    assert "stopped" in hooked.message and not hooked.converged
    np.testing.assert_allclose(hooked.step.numpy(), plain.step.numpy(), rtol=1e-12, atol=1e-14)
    assert hooked.model_value == pytest.approx(plain.model_value, rel=1e-12)


def test_eigen_estimate_stop_hook():
    H, g = random_problem("indefinite", 60, seed=4)
    calls = [0]

    def mv(v):
        calls[0] += 1
        return torch_matvec(H)(v)

    extreme_eigenvalues(mv, torch.from_numpy(g), 30, tol=1e-30, stop=lambda j: j >= 3)
    assert calls[0] == 3


@pytest.mark.parametrize("mode", ["exact", "fd"])
@pytest.mark.parametrize("objective", ["retain", "npo"])
def test_hvp_pass_cost_is_what_one_hvp_counts(data, mode, objective):
    from dist_unlearn.curvature.objective import build_oracle

    retain, forget = data
    oracle = build_oracle(tiny(), ce, retain, forget, objective=objective, hvp=mode, hvp_batch_size=16)
    predicted = oracle.hvp_pass_cost()
    before = oracle.cost.example_passes
    oracle.hvp(tuple(torch.ones_like(p) for p in oracle.params))
    assert oracle.cost.example_passes - before == pytest.approx(predicted)
    assert predicted > 0
