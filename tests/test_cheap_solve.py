"""The cheap solve -- re-solve on the stored Krylov space, the first-M search, the forcing
sequence, the sub-sampled Hessian and the stop rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_methods_outer_loop import FunctionOracle, quartic
from test_solvers_reference import dense_cubic, model, random_problem, torch_matvec
from torch import nn
from torch.utils.data import TensorDataset

from dist_unlearn.api import unlearn
from dist_unlearn.curvature.sample import hvp_sample_size
from dist_unlearn.errors import ConfigError
from dist_unlearn.methods import OuterLoopState, run_curvature_method
from dist_unlearn.methods.cure_newton import forcing_tol
from dist_unlearn.options import UnlearnOptions
from dist_unlearn.solvers import cubic_subproblem, resolve_cubic


class Counted:
    def __init__(self, H):
        self.mv, self.calls = torch_matvec(H), 0

    def __call__(self, v):
        self.calls += 1
        return self.mv(v)


@pytest.mark.parametrize("kind", ["pd", "indefinite"])
@pytest.mark.parametrize("M_new", [1e-3, 0.5, 40.0])
def test_resolve_uses_no_matvec_and_equals_a_fresh_dense_solve(kind, M_new):
    H, g = random_problem(kind, 30, seed=3)
    mv = Counted(H)
    first = cubic_subproblem(mv, torch.from_numpy(g), 1.0, tol=1e-13, max_iter=30, keep_krylov=True)
    built = mv.calls
    again = resolve_cubic(first.krylov, M_new)
    assert mv.calls == built  # no matvec
    assert again.hvps == 0
    d_ref, lam_ref, _ = dense_cubic(H, g, M_new)
    d = again.step.numpy()
    assert np.linalg.norm(d - d_ref) <= 1e-8 * np.linalg.norm(d_ref)
    assert again.multiplier == pytest.approx(lam_ref, rel=1e-8)
    assert again.model_value == pytest.approx(model(H, g, M_new, d_ref), rel=1e-8)
    first.krylov.release()
    with pytest.raises(ConfigError, match="released"):
        resolve_cubic(first.krylov, M_new)


def test_resolve_on_a_partial_space_matches_the_solve_that_stops_there():
    """On a k-dimensional space the re-solve is the exact Krylov minimiser: a fresh solve at the new M forced
    to the same k iterations gives the same step."""
    H, g = random_problem("indefinite", 200, seed=5)
    first = cubic_subproblem(
        torch_matvec(H), torch.from_numpy(g), 0.01, tol=1e-30, max_iter=12, keep_krylov=True
    )
    again = resolve_cubic(first.krylov, 3.0)
    fresh = cubic_subproblem(torch_matvec(H), torch.from_numpy(g), 3.0, tol=1e-30, max_iter=12)
    assert torch.allclose(again.step, fresh.step, rtol=0, atol=1e-10 * float(fresh.step.norm()))
    assert again.residual == pytest.approx(fresh.residual, rel=1e-6)
    first.krylov.release()


def test_a_rejected_step_is_re_solved_without_an_hvp():
    oracle = FunctionOracle(quartic, torch.zeros(4))
    opts = UnlearnOptions(max_steps=4, M_init=1e-6, tol=1e-12)  # far too small: the first tries are rejected
    steps = run_curvature_method("cure_newton", oracle, opts)
    rejected = [i for i, s in enumerate(steps) if not s.accepted]
    assert rejected, "the tiny M_init must be rejected at least once"
    for i in rejected:
        nxt = steps[i + 1]
        assert nxt.hvps == 0 and nxt.gradients == 0  # same point: no gradient, no HVP
        assert nxt.M == pytest.approx(steps[i].M * opts.arc_grow)
    assert any(s.accepted for s in steps)


def test_first_M_search_keeps_the_best_decrease_among_the_accepted_tries():
    oracle = FunctionOracle(quartic, torch.zeros(4))
    opts = UnlearnOptions(max_steps=1, first_M_tries=5, first_M_factor=10.0, eig_iterations=10)
    steps = run_curvature_method("cure_newton", oracle, opts)
    w1 = oracle.w.clone()
    M_chosen = steps[0].M
    # the same grid by hand: M0 = the documented estimate, then one solve per M on a fresh oracle
    ref = FunctionOracle(quartic, torch.zeros(4))
    first = run_curvature_method(
        "cure_newton", ref, UnlearnOptions(max_steps=1, first_M_tries=1, M_min=1e-10)
    )
    M0 = first[0].M
    grid = [M0 / 10**j for j in range(5)]
    assert min(abs(M_chosen / m - 1) for m in grid) < 1e-9
    f0 = float(quartic(torch.zeros(4, dtype=torch.float64)))
    accepted_losses = []
    for M in grid:
        o = FunctionOracle(quartic, torch.zeros(4))
        st = run_curvature_method("cure_newton", o, UnlearnOptions(M=M, max_steps=1, krylov_tol=1e-10))
        pred = -st[0].model_value
        f1 = float(quartic(o.w))
        if (f0 - f1) / pred >= opts.arc_eta1:
            accepted_losses.append((f1, M))
    best_loss, best_M = min(accepted_losses)
    assert M_chosen == pytest.approx(best_M, rel=1e-9)
    assert float(quartic(w1)) == pytest.approx(best_loss, rel=1e-6)
    # the tries cost one loss evaluation each and no HVP beyond the estimate and one Krylov space
    assert oracle.counters["losses"] == 5


def test_forcing_sequence_is_loose_first_and_floors_at_krylov_tol():
    opts = UnlearnOptions()
    assert forcing_tol(opts, 1.0, 1.0) == pytest.approx(0.1)
    assert forcing_tol(opts, 1e-2, 1.0) == pytest.approx(0.01)
    assert forcing_tol(opts, 1e-20, 1.0) == pytest.approx(opts.krylov_tol)
    assert forcing_tol(UnlearnOptions(krylov_tol=1e-8), 1.0, 1.0) == 1e-8  # an explicit tol is used as is
    assert forcing_tol(UnlearnOptions(krylov_forcing=0.0), 1.0, 1.0) == opts.krylov_tol


def test_hvp_sample_default_and_explicit():
    assert hvp_sample_size(None, 2000) is None  # up to 2048 examples: all of them
    assert hvp_sample_size(None, 10_000) == 2048
    assert hvp_sample_size(None, 30_000) == 3000  # 10% beyond 20,480
    assert hvp_sample_size(100, 1000) == 100
    assert hvp_sample_size("all", 20_000) is None
    assert hvp_sample_size(5000, 1000) is None


def ce(m, b):
    return F.cross_entropy(m(b[0]), b[1])


def test_cure_newton_hvps_touch_only_the_sample_and_the_gradient_stays_full():
    torch.manual_seed(0)
    X = torch.randn(60, 3, dtype=torch.float64)
    y = (X[:, 0] > 0).long()
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    res = unlearn(net, ce, TensorDataset(X[10:], y[10:]), None, method="cure_newton", M=1.0, max_steps=1,
                  hvp_sample=7)  # fmt: skip
    by = res.stats["cost"]["by_kind"]
    assert by["hvp_exact"]["examples"] == 7 * by["hvp_exact"]["calls"]
    assert by["gradient"]["examples"] == 50 * by["gradient"]["calls"]


def test_default_run_stops_when_the_model_stops_changing():
    oracle = FunctionOracle(quartic, torch.zeros(4))
    state = OuterLoopState()
    run_curvature_method("cure_newton", oracle, UnlearnOptions(max_steps=50), state=state)
    assert state.stop_reason in ("converged", "stalled")
    assert state.accepted < 50
    # with an explicit absolute tol the relative rules are off: it goes on until |g| <= tol
    state2 = OuterLoopState()
    run_curvature_method(
        "cure_newton",
        FunctionOracle(quartic, torch.zeros(4)),
        UnlearnOptions(max_steps=50, tol=1e-10),
        state=state2,
    )
    assert state2.final_grad_norm <= 1e-10


def test_a_run_resumed_from_a_checkpoint_solves_like_the_undisturbed_one():
    """The forcing sequence's |g_0| lives in the loop state, so a restart does not change the tolerances."""
    import pickle

    g = torch.Generator().manual_seed(0)
    n = 60
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    A = Q @ torch.diag(torch.logspace(-3, 1, n, dtype=torch.float64)) @ Q.T
    b = torch.randn(n, generator=g, dtype=torch.float64)

    def f(w):  # ill-conditioned: the Krylov solves stop at the forcing tolerance, not at breakdown
        return 0.5 * w @ A @ w + 0.25 * (w**4).sum() + b @ w

    opts = {"max_steps": 4, "krylov_max_iter": 50}
    clean = FunctionOracle(f, torch.zeros(n))
    run_curvature_method("cure_newton", clean, UnlearnOptions(**opts))
    part = FunctionOracle(f, torch.zeros(n))
    state = OuterLoopState()
    run_curvature_method("cure_newton", part, UnlearnOptions(**{**opts, "max_steps": 2}), state=state)
    state = pickle.loads(pickle.dumps(state))  # what a checkpoint keeps
    resumed = FunctionOracle(f, part.w)
    run_curvature_method("cure_newton", resumed, UnlearnOptions(**opts), state=state)
    assert torch.allclose(resumed.w, clean.w, rtol=0, atol=1e-12)
