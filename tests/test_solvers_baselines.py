"""Newton baselines, the gradient-descent cubic solver and the spectrum estimates vs dense references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_solvers_reference import OpaqueSpace, dense_cubic, model, random_problem, torch_matvec

from dist_unlearn.errors import ConfigError, NumericalError
from dist_unlearn.solvers import (
    cubic_gradient_descent,
    cubic_subproblem,
    damped_newton,
    extreme_eigenvalues,
    pinv_newton,
    spectral_density,
)


@pytest.mark.parametrize("kind,damping", [("pd", 0.0), ("indefinite", 3.0), ("singular", 0.1)])
@pytest.mark.parametrize("store_basis", [True, False])
def test_damped_newton_matches_dense_solve(kind, damping, store_basis):
    H, g = random_problem(kind, 80, seed=2)
    res = damped_newton(
        torch_matvec(H),
        torch.from_numpy(g),
        damping,
        tol=1e-10,
        reorthogonalize=store_basis,
        store_basis=store_basis,
    )
    ref = -np.linalg.solve(H + damping * np.eye(80), g)
    assert res.converged
    assert np.linalg.norm(res.step.numpy() - ref) <= 1e-7 * np.linalg.norm(ref)
    assert math.isclose(res.model_value, g @ ref + 0.5 * ref @ H @ ref, rel_tol=1e-8)
    assert math.isclose(res.step_norm, np.linalg.norm(ref), rel_tol=1e-8)


def test_damped_newton_is_a_failing_baseline_near_singular():
    """Faithful baseline: tiny damping on a nearly singular H gives a huge update (no safeguard)."""
    H, g = random_problem("spiked", 100, seed=3)
    newton = damped_newton(torch_matvec(H), torch.from_numpy(g), 1e-4, tol=1e-10, max_iter=100)
    cubic = cubic_subproblem(torch_matvec(H), torch.from_numpy(g), 1.0, tol=1e-10)
    assert newton.step_norm > 50 * cubic.step_norm
    with pytest.raises(ConfigError, match="damping"):
        damped_newton(torch_matvec(H), torch.from_numpy(g), -1.0)
    diag = torch.tensor([-1.0, 2.0, 3.0], dtype=torch.float64)
    with pytest.raises(NumericalError, match="singular"):
        damped_newton(lambda v: diag * v, torch.ones(3, dtype=torch.float64), 1.0)


def test_pinv_newton_matches_dense_pseudo_inverse():
    rng = np.random.default_rng(4)
    n = 60
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    ev = np.r_[np.zeros(15), rng.uniform(1.0, 5.0, 40), -rng.uniform(1.0, 2.0, 5)]
    H = (Q * ev) @ Q.T
    g = rng.standard_normal(n)
    res = pinv_newton(torch_matvec(H), torch.from_numpy(g), threshold=1e-6, tol=1e-10)
    ref = -np.linalg.pinv(H, rcond=1e-8, hermitian=True) @ g
    assert np.linalg.norm(res.step.numpy() - ref) <= 1e-6 * np.linalg.norm(ref)
    default = pinv_newton(torch_matvec(H), torch.from_numpy(g), tol=1e-10)
    assert np.linalg.norm(default.step.numpy() - ref) <= 1e-6 * np.linalg.norm(ref)
    # rank-2 truncation: only the two largest |eigenvalues| (a clear gap: 7 and 6 vs <= 5)
    ev2 = ev.copy()
    ev2[15:17] = [7.0, 6.0]
    H2 = (Q * ev2) @ Q.T
    low = pinv_newton(torch_matvec(H2), torch.from_numpy(g), rank=2, tol=1e-10)
    u = Q[:, 15:17]
    ref2 = -u @ ((u.T @ g) / ev2[15:17])
    assert np.linalg.norm(low.step.numpy() - ref2) <= 1e-6 * np.linalg.norm(ref2)
    assert len(low.eigenvalues) == 2


def test_gradient_descent_reaches_the_cubic_minimiser():
    for kind, seed in [("pd", 1), ("indefinite", 2)]:
        H, g = random_problem(kind, 20, seed=seed)
        H = H / np.abs(np.linalg.eigvalsh(H)).max()
        g = g / np.linalg.norm(g)
        d_ref, lam_ref, _ = dense_cubic(H, g, 2.0)
        res = cubic_gradient_descent(torch_matvec(H), torch.from_numpy(g), 2.0, tol=1e-7, max_iter=20000)
        assert res.converged, res.message
        assert math.isclose(res.model_value, model(H, g, 2.0, d_ref), rel_tol=1e-8)
        assert np.linalg.norm(res.step.numpy() - d_ref) <= 1e-5 * np.linalg.norm(d_ref)
        krylov = cubic_subproblem(torch_matvec(H), torch.from_numpy(g), 2.0, tol=1e-7)
        assert res.hvps > 3 * krylov.hvps
    with pytest.raises(ConfigError, match="lr="):
        cubic_gradient_descent(torch_matvec(H), torch.from_numpy(g), 1.0, lr=-1.0)
    zero = cubic_gradient_descent(torch_matvec(H), torch.zeros(20, dtype=torch.float64), 1.0)
    assert zero.converged and zero.step_norm == 0.0


def test_extreme_eigenvalues():
    H, _ = random_problem("spiked", 150, seed=6)
    w = np.linalg.eigvalsh(H)
    v0 = torch.from_numpy(np.random.default_rng(0).standard_normal(150))
    lo, hi = extreme_eigenvalues(torch_matvec(H), v0, 80)
    assert w[0] - 1e-12 <= lo <= w[0] + 1e-6 * abs(w[-1])
    assert abs(hi - w[-1]) <= 1e-8 * w[-1]


def test_spectral_density_matches_dense_spectrum():
    rng = np.random.default_rng(7)
    n = 300
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    ev = np.r_[rng.normal(0.0, 0.05, n - 30), rng.uniform(5.0, 10.0, 30)]  # bulk + 10% outliers
    H = (Q * ev) @ Q.T
    grid, dens = spectral_density(torch_matvec(H), torch.zeros(n, dtype=torch.float64), num_probes=8, k=40)
    dx = grid[1] - grid[0]
    assert abs(dens.sum() * dx - 1.0) < 1e-2
    mean = (grid * dens).sum() * dx
    assert abs(mean - ev.mean()) < 0.1 * abs(ev.mean())  # trace estimate (Hutchinson, 8 probes)
    bulk = dens[grid < 2.5].sum() * dx  # mass of the bulk: 90% of the eigenvalues
    assert abs(bulk - 0.9) < 0.05
    assert grid[np.argmax(dens)] < 0.5


def test_every_solver_speaks_only_the_protocol_and_frees_its_vectors():
    """Opaque handles (like Ray shards): no indexing possible, no leaks, no use after release."""
    rng = np.random.default_rng(5)
    n = 40
    ev = np.sort(rng.uniform(-1.0, 8.0, n))
    ev[0] = -3.0
    H = np.diag(ev)
    g = 0.01 * rng.standard_normal(n)
    g[0] = 0.0
    space = OpaqueSpace()
    gh = space.wrap(torch.from_numpy(g))
    mv = space.matvec(H)
    res = cubic_subproblem(mv, gh, 1.0, tol=1e-9, hard_case_probe=25, space=space)
    assert res.hard_case and space.live == 2
    d_ref, lam_ref, _ = dense_cubic(H, g, 1.0)
    assert math.isclose(res.model_value, model(H, g, 1.0, d_ref), rel_tol=1e-9)
    lo, hi = extreme_eigenvalues(mv, gh, 20, space=space)
    assert space.live == 2 and hi <= ev[-1] + 1e-12
    damped_newton(mv, gh, 5.0, space=space)
    pinv_newton(mv, gh, space=space, reorthogonalize=False, store_basis=False)
    cubic_gradient_descent(mv, gh, 1.0, space=space, max_iter=50)
    assert space.live == 5  # g + four returned steps
    spectral_density(mv, gh, num_probes=2, k=5, space=space)
    assert space.live == 5
