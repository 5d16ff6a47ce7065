"""Branching decisions (ARC accept / shrink, the first-M search, stop rules, Krylov and eigenvalue stops) do
not flip when the reduced values move by a few ulps, as they do between a sharded and a one-process run.

The scenario puts a decision exactly on its threshold: a reference run gives rho (or |g_k| / |g_0|) of a
step, and the next runs use that value as the threshold (arc_eta2 = rho_0, grad_rtol = |g_2| / |g_0|). Each
perturbed run multiplies every loss, dot product and norm by (1 + k u), k a random integer in [-4, 4], u the
float64 unit roundoff, the way a different reduction order moves them. The decisions (accepted flags, Krylov
iterations, stop reason) must equal the unperturbed run's. With the tie bands switched off (rtol = 0) the
same scenario does flip, so the test can fail.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from test_methods_outer_loop import FunctionOracle

from dist_unlearn.linalg import TensorSpace
from dist_unlearn.methods import OuterLoopState, first_m, outer_loop, run_curvature_method
from dist_unlearn.options import UnlearnOptions
from dist_unlearn.solvers import ties
from dist_unlearn.solvers.ties import TIE_RTOL, at_most, clearly_less, rho_at_least

U = 2.0**-53


class Jitter:
    """Multiplies values by (1 + k u), k drawn from [-4, 4] (None: no perturbation)."""

    def __init__(self, seed: int | None) -> None:
        self.rng = None if seed is None else np.random.default_rng(seed)

    def __call__(self, x: float) -> float:
        if self.rng is None:
            return float(x)
        return float(x) * (1.0 + int(self.rng.integers(-4, 5)) * U)


class JitterSpace(TensorSpace):
    """TensorSpace whose dot products (and so norms) come back a few ulps off."""

    def __init__(self, jitter: Jitter) -> None:
        super().__init__()
        self.jitter = jitter

    def dot(self, x, y) -> float:
        return self.jitter(super().dot(x, y))


A = torch.tensor([1.0, 1e-6, -0.5, 3.0, 0.2, -0.05], dtype=torch.float64)
B = torch.tensor([0.3, 0.2, 0.1, -0.4, 0.25, -0.1], dtype=torch.float64)


def quartic(w):
    """Indefinite at 0, bounded below: several ARC steps with accepts, shrinks and a Krylov solve each."""
    return (0.5 * A * w * w + 0.25 * w**4).sum() + B @ w


class JitterOracle(FunctionOracle):
    """FunctionOracle over ``quartic`` with every reduced scalar (losses, dots) jittered."""

    def __init__(self, seed: int | None) -> None:
        super().__init__(quartic, torch.zeros(len(A), dtype=torch.float64))
        self.jitter = Jitter(seed)
        self.space = JitterSpace(self.jitter)

    def loss(self) -> float:
        return self.jitter(super().loss())

    def loss_and_gradient(self):
        value, g = super().loss_and_gradient()
        return self.jitter(value), g


def run(seed: int | None, **opts):
    options = UnlearnOptions(max_steps=8, krylov_tol=1e-8, **opts)
    state = OuterLoopState(seed=0)
    steps = run_curvature_method("cure_newton", JitterOracle(seed), options, state=state)
    return steps, state


def decisions(steps, state):
    """What branched (and M, which ARC's shrink / grow decisions set: a factor 10 or 4 when one flips)."""
    return (
        [s.accepted for s in steps],
        [s.krylov_iterations for s in steps],
        [s.converged for s in steps],
        state.stop_reason,
        [f"{s.M:.6e}" for s in steps],
    )


def tie_options(which: str) -> dict:
    """Options that put ``which`` exactly on a value the run then meets (checked: a real tie)."""
    steps, _ = run(None)
    g0 = steps[0].grad_norm
    if which == "arc_eta2":  # a shrink decision: rho of an accepted step, above the default arc_eta1
        candidates = [{"arc_eta2": s.rho} for s in steps if s.rho is not None and 0.1 < s.rho < 1.0]
    else:  # the relative stop rule: |g_k| / |g_0| of a later point
        candidates = [{"grad_rtol": s.grad_norm / g0} for s in steps[2:] if s.accepted]
    for opts in candidates:
        tied, state = run(None, **opts)
        if which == "arc_eta2" and any(s.rho == opts["arc_eta2"] for s in tied):
            return opts
        on_rule = abs(state.final_grad_norm / g0 - opts.get("grad_rtol", -1.0)) <= 4 * U
        if which == "grad_rtol" and state.stop_reason == "converged" and on_rule:
            return opts
    raise AssertionError(f"no tie for {which} in the reference run: {[s.rho for s in steps]}")


def test_helpers_decide_ties_one_way():
    x = 0.3
    for k in range(-4, 5):
        y = x * (1 + k * U)
        assert at_most(y, x) and rho_at_least(1.0, 1.0 - y, x, 1.0) is rho_at_least(1.0, 1.0 - x, x, 1.0)
        assert not clearly_less(y, x)
    # outside the band the plain comparison holds
    assert not at_most(x * (1 + 10 * TIE_RTOL), x)
    assert not rho_at_least(1.0, 0.99, 0.1, 0.2)  # rho = 0.1 < 0.2 by far
    assert rho_at_least(1.0, 0.97, 0.1, 0.2)
    assert clearly_less(0.9, 1.0)
    assert not rho_at_least(1.0, float("nan"), 0.1, 0.1) and not rho_at_least(1.0, 0.5, 0.0, 0.1)


@pytest.mark.parametrize("which", ["arc_eta2", "grad_rtol"])
def test_decisions_on_a_threshold_survive_few_ulp_perturbations(which):
    opts = tie_options(which)
    ref = decisions(*run(None, **opts))
    for seed in range(8):
        assert decisions(*run(seed, **opts)) == ref, f"seed {seed}: a decision flipped"


@pytest.mark.parametrize("which", ["arc_eta2", "grad_rtol"])
def test_without_tie_bands_the_same_perturbations_flip_a_decision(monkeypatch, which):
    """Control: with rtol = 0 (plain comparisons) the scenario above is not robust."""
    opts = tie_options(which)
    for module in (outer_loop, first_m):
        for name in ("rho_at_least", "at_most", "clearly_less"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, functools.partial(getattr(ties, name), rtol=0.0))
    ref = decisions(*run(None, **opts))
    assert any(decisions(*run(seed, **opts)) != ref for seed in range(8))
