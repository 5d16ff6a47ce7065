"""Curvature reused across outer steps: a kept Lanczos basis serves later cubic solves without an HVP.

References are dense: where the Hessian has not changed and the kept space is invariant under it, the step on
the kept basis must be the global cubic minimiser (dense eigendecomposition) and a fresh Krylov solve's step.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_methods_outer_loop import FunctionOracle, quartic
from test_solvers_reference import OpaqueSpace, dense_cubic, model, torch_matvec

from dist_unlearn.errors import ConfigError
from dist_unlearn.methods import OuterLoopState, run_curvature_method
from dist_unlearn.options import UnlearnOptions
from dist_unlearn.solvers import cubic_subproblem, resolve_cubic
from dist_unlearn.solvers.reuse import krylov_basis, own_view, project, solve_projected


def low_rank(n: int, rank: int, seed: int, indefinite: bool = False) -> np.ndarray:
    """H = U diag(ev) U^T of rank ``rank`` (zero curvature off range(U), as the kept model assumes)."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((n, rank)))
    ev = rng.uniform(0.5, 8.0, rank)
    if indefinite:
        ev[0] = -1.5
    return (U * ev) @ U.T


@pytest.mark.parametrize("indefinite", [False, True])
@pytest.mark.parametrize("M", [0.05, 2.0])
def test_kept_basis_at_a_new_point_gives_the_fresh_solve_of_an_unchanged_hessian(indefinite, M):
    """A quadratic f(w) = 1/2 w.H w + b.w: the Hessian is the same at every point. The basis built from g_0
    spans range(H) + g_0 (Lanczos breaks down after rank + 1 steps), so at w_1 the kept model is H itself:
    the reused step equals the dense global minimiser and the fresh Krylov solve at w_1, with no matvec."""
    n, rank = 120, 6
    H = low_rank(n, rank, seed=1, indefinite=indefinite)
    rng = np.random.default_rng(2)
    b = rng.standard_normal(n)
    w0, w1 = rng.standard_normal(n), rng.standard_normal(n)
    g0, g1 = H @ w0 + b, H @ w1 + b
    calls = [0]

    def mv(v):
        calls[0] += 1
        return torch.from_numpy(H) @ v

    basis = krylov_basis(mv, torch.from_numpy(g0), 30)
    assert basis.breakdown and basis.dimension == rank + 1
    built = calls[0]
    view = project(basis, torch.from_numpy(g1))
    reused = solve_projected(view, M)
    assert calls[0] == built and reused.hvps == 0  # no matvec after the build
    d_ref, lam_ref, _ = dense_cubic(H, g1, M)
    fresh = cubic_subproblem(torch_matvec(H), torch.from_numpy(g1), M, tol=1e-12, max_iter=40)
    scale = np.linalg.norm(d_ref)
    assert np.linalg.norm(reused.step.numpy() - d_ref) <= 1e-8 * scale
    assert np.linalg.norm(reused.step.numpy() - fresh.step.numpy()) <= 1e-8 * scale
    assert reused.multiplier == pytest.approx(lam_ref, rel=1e-8)
    assert reused.model_value == pytest.approx(model(H, g1, M, d_ref), rel=1e-8)
    view.release()
    basis.release()


def test_at_its_own_point_the_kept_basis_re_solves_exactly():
    H = low_rank(60, 60, seed=3, indefinite=True)
    g = np.random.default_rng(4).standard_normal(60)
    basis = krylov_basis(torch_matvec(H), torch.from_numpy(g), 12)
    assert basis.dimension == 12 and not basis.breakdown
    ref = resolve_cubic(basis, 0.7)
    own = solve_projected(own_view(basis), 0.7)
    assert torch.equal(own.step, ref.step) and own.model_value == ref.model_value
    # the projection of the same g onto its own basis is the same problem up to rounding
    projected = solve_projected(project(basis, torch.from_numpy(g)), 0.7)
    assert torch.allclose(projected.step, ref.step, rtol=0, atol=1e-10 * float(ref.step.norm()))
    basis.release()
    with pytest.raises(ConfigError, match="released"):
        project(basis, torch.from_numpy(g))


def test_reuse_speaks_only_the_vector_protocol_and_frees_what_it_allocates():
    """Opaque handles (as shards on Ray workers): no indexing, and every vector the projection and the solve
    allocate is released (the basis stays with its owner until released)."""
    H = low_rank(40, 40, seed=5)
    rng = np.random.default_rng(6)
    space = OpaqueSpace()
    g0, g1 = (space.wrap(torch.from_numpy(rng.standard_normal(40))) for _ in range(2))
    basis = krylov_basis(space.matvec(H), g0, 8, space=space)
    live = space.live
    view = project(basis, g1)
    res = solve_projected(view, 1.0)
    space.release(res.step)
    view.release()
    assert space.live == live  # the projection's r released with the view; the basis kept
    basis.release()
    space.release(g0)
    space.release(g1)
    assert space.live == 0


def quadratic(w):
    """A strictly convex quadratic in 4 variables (its Hessian is the same everywhere)."""
    H = torch.tensor([[3.0, 0.5, 0.0, 0.1], [0.5, 2.0, 0.3, 0.0], [0.0, 0.3, 1.0, 0.2], [0.1, 0.0, 0.2, 0.5]])
    return 0.5 * w @ H.double() @ w + torch.tensor([1.0, -2.0, 0.5, 0.3], dtype=torch.float64) @ w


def test_outer_loop_with_reuse_takes_the_fresh_solves_steps_and_spends_hvps_once():
    opts = {"M": 0.5, "max_steps": 4, "tol": 0.0, "krylov_tol": 1e-12, "krylov_max_iter": 10}
    fresh, kept = FunctionOracle(quadratic, torch.zeros(4)), FunctionOracle(quadratic, torch.zeros(4))
    steps_f = run_curvature_method("cure_newton", fresh, UnlearnOptions(reuse_curvature=False, **opts))
    state = OuterLoopState()
    steps_k = run_curvature_method(
        "cure_newton", kept, UnlearnOptions(reuse_curvature=True, **opts), state=state
    )
    assert len(steps_f) == len(steps_k) == 4
    for a, b in zip(steps_f, steps_k, strict=True):
        assert b.step_norm == pytest.approx(a.step_norm, rel=1e-9)
    assert torch.allclose(kept.w, fresh.w, rtol=0, atol=1e-12)
    assert state.curvature_bases == 1
    assert [s.hvps for s in steps_k[1:]] == [0, 0, 0]  # later steps: a gradient and no HVP
    assert kept.counters["hvps"] == 4 < fresh.counters["hvps"]  # one 4-dimensional basis in all


def test_rejections_on_a_stale_basis_rebuild_it_where_the_run_is():
    """On the quartic (its Hessian changes from point to point) a kept basis goes stale; after
    ``curvature_refresh`` steps in a row that it fails (rejected, or accepted only as a tie) the basis is
    rebuilt at the current point, and the run converges as fresh solves do."""
    oracle = FunctionOracle(quartic, torch.zeros(4))
    opts = UnlearnOptions(reuse_curvature=True, curvature_refresh=2, max_steps=30, tol=1e-10)
    state = OuterLoopState()
    steps = run_curvature_method("cure_newton", oracle, opts, state=state)
    assert state.curvature_bases >= 2
    rebuilt = [j for j, s in enumerate(steps) if j > 0 and s.hvps]
    assert len(rebuilt) == state.curvature_bases - 1
    for j in rebuilt:  # each rebuild follows two steps the kept model failed (rho < eta1), then Lanczos
        assert all(not steps[i].rho >= opts.arc_eta1 for i in (j - 1, j - 2))
        assert steps[j].hvps == steps[j].krylov_iterations > 0
    assert state.stop_reason == "converged" and state.final_grad_norm <= 1e-10  # and the run converges
    never = FunctionOracle(quartic, torch.zeros(4))
    state0 = OuterLoopState()
    opts0 = UnlearnOptions(reuse_curvature=True, curvature_refresh=0, max_steps=30, tol=1e-10)
    run_curvature_method("cure_newton", never, opts0, state=state0)
    assert state0.curvature_bases == 1  # 0: the first basis serves the whole run (here: it stalls)
    assert state0.final_grad_norm > 1e-3


def test_a_resumed_run_rebuilds_its_basis_at_the_checkpoint():
    """The kept basis is not part of a checkpoint (on the engine it lives on the workers): a run resumed from
    a pickled state builds a new basis at the resumed point. On a quadratic the Hessian is the same there, so
    the resumed run ends where the undisturbed one does."""
    import pickle

    opts = {"M": 0.5, "tol": 0.0, "reuse_curvature": True, "krylov_tol": 1e-12}
    clean = FunctionOracle(quadratic, torch.zeros(4))
    run_curvature_method("cure_newton", clean, UnlearnOptions(max_steps=4, **opts))
    part = FunctionOracle(quadratic, torch.zeros(4))
    state = OuterLoopState()
    run_curvature_method("cure_newton", part, UnlearnOptions(max_steps=2, **opts), state=state)
    state = pickle.loads(pickle.dumps(state))  # what a checkpoint keeps
    resumed = FunctionOracle(quadratic, part.w)
    run_curvature_method("cure_newton", resumed, UnlearnOptions(max_steps=4, **opts), state=state)
    assert state.accepted == 4 and state.curvature_bases == 2  # one before the restart, one after
    assert torch.allclose(resumed.w, clean.w, rtol=0, atol=1e-12)
