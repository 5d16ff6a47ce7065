"""Outer-loop logic of the curvature methods on closed-form functions (no neural network needed).

``FunctionOracle`` is a CurvatureOracle over f(w), w a flat float64 tensor, with autograd gradients and HVPs,
so every expectation is checked against dense linear algebra on the same f.
"""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from dist_unlearn.errors import ConfigError, NumericalError
from dist_unlearn.linalg import TensorSpace
from dist_unlearn.methods import OuterLoopState, run_curvature_method
from dist_unlearn.options import UnlearnOptions


class FunctionOracle:
    """CurvatureOracle over a differentiable f: R^n -> R."""

    def __init__(self, f, w0):
        self.f = f
        self.w = torch.as_tensor(w0, dtype=torch.float64).clone()
        self.space = TensorSpace()
        self.counters = {"gradients": 0, "hvps": 0, "losses": 0}
        self.seeds: list[int | None] = []

    def loss(self) -> float:
        self.counters["losses"] += 1
        with torch.no_grad():
            return float(self.f(self.w))

    def loss_and_gradient(self):
        self.counters["gradients"] += 1
        w = self.w.clone().requires_grad_(True)
        value = self.f(w)
        (g,) = torch.autograd.grad(value, w)
        return float(value.detach()), g.detach()

    def gradient(self):
        return self.loss_and_gradient()[1]

    def hvp(self, v):
        self.counters["hvps"] += 1
        w = self.w.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(self.f(w), w, create_graph=True)
        (hv,) = torch.autograd.grad(g, w, v)
        return hv.detach()

    def apply_update(self, d, scale=1.0):
        self.w = self.w + scale * d

    def snapshot(self):
        return self.w.clone()

    def restore(self, snap):
        self.w = snap.clone()

    def resample(self, seed):
        self.seeds.append(seed)


A = torch.tensor([1.0, 1e-6, -0.5, 3.0], dtype=torch.float64)
B = torch.tensor([0.3, 0.2, 0.1, -0.4], dtype=torch.float64)


def quartic(w):
    """Indefinite and nearly singular at 0 (eigenvalues 1, 1e-6, -0.5, 3), bounded below by the quartic."""
    return (0.5 * A * w * w + 0.25 * w**4).sum() + B @ w


def dense_hessian(f, w):
    return torch.autograd.functional.hessian(f, w.clone())


def test_arc_reaches_a_local_minimum_of_an_indefinite_function():
    oracle = FunctionOracle(quartic, torch.zeros(4))
    state = OuterLoopState()
    steps = run_curvature_method("cure_newton", oracle, UnlearnOptions(max_steps=50, tol=1e-10), state=state)
    assert state.stop_reason == "converged"
    assert len(steps) <= 15
    w = oracle.w.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(quartic(w), w)
    assert float(grad.norm()) <= 1e-9
    assert float(torch.linalg.eigvalsh(dense_hessian(quartic, oracle.w))[0]) > 0  # a minimum, not a saddle
    losses = [s.loss for s in steps if s.accepted] + [state.final_loss]
    assert all(b <= a + 1e-15 for a, b in zip(losses, losses[1:], strict=False))  # ARC is monotone


def test_fixed_M_accepts_every_step_and_keeps_M():
    oracle = FunctionOracle(quartic, torch.zeros(4))
    steps = run_curvature_method("cure_newton", oracle, UnlearnOptions(M=1.0, max_steps=3))
    assert [s.accepted for s in steps] == [True, True, True]
    assert all(s.M == 1.0 and s.rho is None for s in steps)
    assert oracle.counters["losses"] == 0  # no trial-loss evaluations with a fixed M


def logcosh(w):
    return torch.log(torch.cosh(w)).sum()


def test_arc_rejects_an_overshooting_step_restores_weights_and_grows_M():
    # Newton on log cosh from |w| = 3 overshoots far (d = -sinh w cosh w): a tiny M_init makes that step.
    w0 = torch.tensor([3.0, -2.5])
    oracle = FunctionOracle(logcosh, w0)
    seen = []
    opts = UnlearnOptions(M_init=1e-6, max_steps=40, tol=1e-10, arc_grow=10.0)
    steps = run_curvature_method(
        "cure_newton", oracle, opts, on_step=lambda rec, st: seen.append((rec, oracle.w.clone(), st.M))
    )
    assert len(seen) == len(steps)
    first = steps[0]
    assert not first.accepted and first.rho is not None and first.rho < opts.arc_eta1
    assert first.trial_loss > first.loss  # the overshoot went uphill
    assert torch.equal(seen[0][1], w0.double())  # weights restored exactly
    assert seen[0][2] == pytest.approx(1e-6 * 10.0)  # M grown by arc_grow
    assert steps[1].loss == first.loss and steps[1].M == pytest.approx(1e-5)
    assert steps[1].gradients == 0  # the gradient at the restored point is reused
    assert any(s.accepted for s in steps)
    assert float(oracle.w.abs().max()) < 1e-8  # still converges to the minimiser 0


def test_arc_shrinks_M_after_very_successful_steps():
    # On a convex quadratic the model overestimates the loss, rho >= 1: every step is very successful.
    Q = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -2.0], dtype=torch.float64)
    oracle = FunctionOracle(lambda w: 0.5 * w @ Q @ w + b @ w, torch.zeros(2))
    opts = UnlearnOptions(M_init=100.0, max_steps=4, tol=0, arc_shrink=0.3)
    steps = run_curvature_method("cure_newton", oracle, opts)
    assert all(s.accepted and s.rho >= 0.9 for s in steps)
    assert [s.M for s in steps] == pytest.approx([100.0 * 0.3**k for k in range(4)])


def test_initial_M_follows_the_documented_estimate():
    oracle = FunctionOracle(quartic, torch.zeros(4))
    opts = UnlearnOptions(max_steps=1, eig_iterations=10, first_M_tries=1)
    steps = run_curvature_method("cure_newton", oracle, opts)
    rho = float(
        torch.linalg.eigvalsh(dense_hessian(quartic, torch.zeros(4, dtype=torch.float64))).abs().max()
    )
    assert steps[0].M == pytest.approx(2 * rho**2 / float(B.norm()), rel=1e-6)


def test_newton_baselines_explode_where_cure_newton_stays_small():
    norms = {}
    for name in ("cure_newton", "damped_newton", "pinv_newton"):
        oracle = FunctionOracle(quartic, torch.zeros(4))
        steps = run_curvature_method(name, oracle, UnlearnOptions(max_steps=1))
        norms[name] = steps[0].step_norm
        assert float(oracle.w.norm()) == pytest.approx(norms[name], rel=1e-9)  # the step was applied
    # dense references: d = -(H + 1e-3 I)^-1 g and d = -H^+ g at w = 0 (H = diag(A), g = B)
    assert norms["damped_newton"] == pytest.approx(float((B / (A + 1e-3)).norm()), rel=1e-6)
    assert norms["pinv_newton"] == pytest.approx(float((B / A).norm()), rel=1e-6)
    assert norms["damped_newton"] > 100 * norms["cure_newton"]
    assert norms["pinv_newton"] > 1e5 * norms["cure_newton"]
    assert norms["cure_newton"] < 1.0


class NaNAfter(FunctionOracle):
    """Returns NaN from loss_and_gradient from its ``n``-th call on (0-based)."""

    def __init__(self, f, w0, n):
        super().__init__(f, w0)
        self.n, self.calls = n, 0

    def loss_and_gradient(self):
        self.calls += 1
        if self.calls > self.n:
            return math.nan, torch.full_like(self.w, math.nan)
        return super().loss_and_gradient()


def test_nan_loss_restores_last_good_weights_and_raises():
    clean = FunctionOracle(quartic, torch.zeros(4))
    run_curvature_method("cure_newton", clean, UnlearnOptions(M=1.0, max_steps=2))
    oracle = NaNAfter(quartic, torch.zeros(4), n=3)  # evaluations at w0, w1, w2 fine; NaN at w3
    with pytest.raises(NumericalError, match="outer step 3.*restored"):
        run_curvature_method("cure_newton", oracle, UnlearnOptions(M=1.0, max_steps=10))
    assert torch.equal(oracle.w, clean.w)  # w2, the last point where loss and gradient were finite


def test_nan_gradient_entry_is_detected():
    class BadGrad(FunctionOracle):
        def loss_and_gradient(self):
            loss, g = super().loss_and_gradient()
            if self.counters["gradients"] >= 2:
                g[1] = math.inf
            return loss, g

    oracle = BadGrad(quartic, torch.zeros(4))
    with pytest.raises(NumericalError, match="gradient"):
        run_curvature_method("cure_newton", oracle, UnlearnOptions(M=1.0, max_steps=10))
    assert torch.equal(oracle.w, torch.zeros(4, dtype=torch.float64))


def test_nan_hessian_vector_product_raises_and_keeps_the_last_good_weights():
    class BadHVP(FunctionOracle):
        def hvp(self, v):
            hv = super().hvp(v)
            return hv * math.nan if self.counters["gradients"] >= 2 else hv

    clean = FunctionOracle(quartic, torch.zeros(4))
    run_curvature_method("cure_newton", clean, UnlearnOptions(M=1.0, max_steps=1))
    oracle = BadHVP(quartic, torch.zeros(4))
    with pytest.raises(NumericalError, match="outer step 1"):
        run_curvature_method("cure_newton", oracle, UnlearnOptions(M=1.0, max_steps=5))
    assert torch.equal(oracle.w, clean.w)  # w1: loss and gradient were finite there, no update was applied


def test_arc_treats_nan_trial_loss_as_rejection_and_continues():
    # f is NaN outside the ball |w| < 1.5: an ARC step that leaves it is rejected, not fatal.
    def f(w):
        value = logcosh(w)
        return torch.where(w.norm() < 1.5, value, torch.full_like(value, math.nan))

    oracle = FunctionOracle(f, torch.tensor([1.2, -0.6]))
    steps = run_curvature_method("cure_newton", oracle, UnlearnOptions(M_init=1e-4, max_steps=50, tol=1e-9))
    assert any(not s.accepted and not math.isfinite(s.trial_loss) for s in steps)
    assert float(oracle.w.abs().max()) < 1e-8


def test_persistent_nan_trial_loss_raises_after_max_rejections():
    class NaNTrial(FunctionOracle):
        def loss(self):
            return math.nan

    oracle = NaNTrial(quartic, torch.zeros(4))
    with pytest.raises(NumericalError, match="trial points"):
        run_curvature_method("cure_newton", oracle, UnlearnOptions(max_rejections=3))
    assert torch.equal(oracle.w, torch.zeros(4, dtype=torch.float64))


def test_restart_from_pickled_state_matches_an_uninterrupted_run():
    straight = FunctionOracle(quartic, torch.zeros(4))
    expected = run_curvature_method("cure_newton", straight, UnlearnOptions(max_steps=5, tol=0))

    first = FunctionOracle(quartic, torch.zeros(4))
    saved = {}

    def checkpoint(rec, st):
        saved["w"], saved["state"] = first.w.clone(), pickle.dumps(st)

    run_curvature_method("cure_newton", first, UnlearnOptions(max_steps=2, tol=0), on_step=checkpoint)
    resumed = FunctionOracle(quartic, saved["w"])
    state = pickle.loads(saved["state"])
    history = run_curvature_method("cure_newton", resumed, UnlearnOptions(max_steps=5, tol=0), state=state)
    assert [(s.step, s.accepted, s.M) for s in history] == [(s.step, s.accepted, s.M) for s in expected]
    assert torch.allclose(resumed.w, straight.w, rtol=1e-12, atol=1e-14)


def test_stochastic_variant_resamples_with_seed_plus_step():
    oracle = FunctionOracle(quartic, torch.zeros(4))
    run_curvature_method("cure_newton_stochastic", oracle, UnlearnOptions(M=1.0, max_steps=3, seed=7, tol=0))
    assert oracle.seeds == [7, 8, 9, 10]  # steps 0..2 and the final evaluation


def test_gd_cubic_solver_option():
    oracle = FunctionOracle(quartic, torch.zeros(4))
    opts = UnlearnOptions(M=1.0, max_steps=3, cubic_solver="gd", krylov_max_iter=200, tol=0)
    steps = run_curvature_method("cure_newton_stochastic", oracle, opts)
    assert all(s.krylov_iterations > 0 for s in steps)
    assert oracle.loss() < steps[0].loss - 0.1


def test_run_curvature_method_rejects_model_methods_and_unknown_names():
    oracle = FunctionOracle(quartic, torch.zeros(4))
    with pytest.raises(ConfigError, match="curvature methods"):
        run_curvature_method("finetune", oracle, UnlearnOptions())
    with pytest.raises(ConfigError, match="Did you mean 'cure_newton'"):
        run_curvature_method("cure_newtn", oracle, UnlearnOptions())
