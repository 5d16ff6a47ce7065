"""cure_newton's cost is set by the forget set: retain-side work on fixed-size samples, counted by role."""

from __future__ import annotations

import pytest
import torch
from test_cost_methods import Counting, ce
from torch.utils.data import TensorDataset

from dist_unlearn.api import unlearn
from dist_unlearn.curvature.sample import default_retain_sample, draw_retain_sample


def counting() -> Counting:
    """The counting MLP with the same initial weights every time (two runs compared must start alike)."""
    torch.manual_seed(0)
    return Counting()


def data(n_retain: int, n_forget: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n_retain + n_forget, 3, generator=g, dtype=torch.float64)
    y = (X[:, 0] + 0.3 * torch.randn(len(X), generator=g, dtype=torch.float64) > 0).long()
    return TensorDataset(X[n_forget:], y[n_forget:]), TensorDataset(X[:n_forget], y[:n_forget])


def work(res) -> dict:
    """Examples per operation of each (role, kind) (the run's gradient / HVP / loss counters)."""
    st = res.stats
    ops = {"gradient": st["total_gradients"], "loss": st["total_losses"], "hvp_exact": st["total_hvps"]}
    return {
        (role, kind): n / ops[kind]
        for role, entry in st["cost"]["by_role"].items()
        for kind, n in entry["by_kind"].items()
    }


@pytest.mark.parametrize(("objective", "n_small"), [("npo", 300), ("retain", 2500)])
def test_the_per_step_work_does_not_grow_with_the_training_set(objective, n_small):
    """The same request (10 forget rows) on a 10x larger training set: every operation reads the same number
    of rows, so the run counts the same work (fixed M and steps: the same operations). Both sizes are above
    every fixed sample (the method's, and the 256 rows of the post-run evidence)."""
    # A tolerance no 3-vector block meets: every solve runs its 3 iterations and no hard-case probe (which
    # follows converged blocks only and spends 2-8 matvecs by the block's spectrum, whatever N is).
    opts = {"objective": objective, "M": 1.0, "max_steps": 2, "krylov_max_iter": 3, "batch_size": 4096}
    opts |= {"krylov_tol": 1e-14, "krylov_forcing": 0.0}
    if objective == "npo":
        opts["forget_weight"] = 0.2
    runs = {}
    for n in (n_small, 10 * n_small):
        retain, forget = data(n)
        model = counting()
        runs[n] = (unlearn(model, ce, retain, forget, method="cure_newton", **opts), model)
    (small, m_small), (large, m_large) = runs[n_small], runs[10 * n_small]
    size = default_retain_sample(objective)
    assert size < n_small
    assert work(small) == work(large)
    assert work(small)[("retain", "gradient")] == size
    assert work(small)[("retain", "hvp_exact")] == size
    assert small.stats["cost"] == large.stats["cost"]
    assert small.stats["total_hvps"] == large.stats["total_hvps"] > 0
    assert m_small.seen == m_large.seen  # the model itself saw as many examples in both runs
    if objective == "retain":  # the retain objective on a sample is anchored at the influence gradient
        assert small.stats["options"]["gradient"] == "influence"
        assert small.stats["cost"]["by_role"]["forget"]["by_kind"] == {"gradient": 10}  # once, at w_0


def test_the_cost_split_by_role_matches_a_hand_count():
    """NPO objective, stop rule, fixed M, one step, a 3-vector kept basis: every forward counted by hand."""
    n_r, n_f, n_c, m = 50, 6, 9, 8
    retain, forget = data(n_r, n_f)
    calibration, _ = data(n_c, 0, seed=5)
    model = counting()
    res = unlearn(
        model, ce, retain, forget, method="cure_newton", objective="npo", forget_weight=0.2, M=1.0,
        max_steps=1, krylov_max_iter=3, retain_sample=m, calibration=calibration, stop_auc_band=0.01,
        batch_size=4096,
    )  # fmt: skip
    st = res.stats
    assert st["accepted_steps"] == 1 and st["total_hvps"] == 3 and st["curvature_bases"] == 1
    gradients = 2  # at w_0 and after the step
    checks = 2  # the stop rule: the weights as given, then after the step
    by_role = {r: e["by_kind"] for r, e in st["cost"]["by_role"].items()}
    assert by_role["retain"] == {"gradient": gradients * m, "hvp_exact": 3 * m}
    assert by_role["forget"] == {
        "loss": n_f + checks * n_f,  # the NPO reference losses, the stop rule's forget losses
        "gradient": gradients * n_f,
        "hvp_exact": 3 * n_f,
    }
    assert by_role["calibration"] == {"loss": checks * n_c}
    passes = {r: e["example_passes"] for r, e in st["cost"]["by_role"].items()}
    assert passes["retain"] == pytest.approx(gradients * m + 3 * 3 * m)
    assert passes["forget"] == pytest.approx((n_f + checks * n_f) / 3 + gradients * n_f + 3 * 3 * n_f)
    assert passes["calibration"] == pytest.approx(checks * n_c / 3)
    assert sum(passes.values()) == pytest.approx(st["cost"]["example_passes"])
    # what the model saw: forward-only passes over the forget rows (reference, stop rule) and the
    # calibration rows; with autograd, gradients and HVPs (one forward each) over the sample and forget rows,
    # and the final retain loss / gradient report on the sample (a diagnostic, not counted as cost)
    assert model.seen["no_grad"] == n_f + checks * (n_f + n_c)
    assert model.seen["grad"] == (gradients + 3) * (m + n_f) + m


def test_the_retain_sample_is_the_same_rows_for_the_same_seed():
    """The draw depends on (rows, seed, objective) only, so an in-process run and a Ray engine run (each rank
    reads rows[rank::W] of the same list) use the same rows; another seed, other rows."""
    a = draw_retain_sample(None, None, 5000, seed=11, objective="npo")
    b = draw_retain_sample(None, None, 5000, seed=11, objective="npo")
    c = draw_retain_sample(None, None, 5000, seed=12, objective="npo")
    assert a.grad_rows == b.grad_rows and a.grad_rows != c.grad_rows
    assert a.grad_rows == sorted(set(a.grad_rows)) and len(a.grad_rows) == 64
    assert draw_retain_sample(None, None, 50, seed=11, objective="npo").grad_rows is None  # fewer: all rows
