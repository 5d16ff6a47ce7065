"""Lanczos tridiagonalisation and the second pass, against dense float64 linear algebra."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_solvers_reference import OpaqueSpace, random_problem, torch_matvec

from dist_unlearn.errors import ConfigError, NumericalError
from dist_unlearn.solvers import lanczos, lanczos_combine


def tridiag(res):
    k = res.iterations
    b = np.asarray(res.betas[: k - 1])
    return np.diag(res.alphas) + np.diag(b, 1) + np.diag(b, -1)


@pytest.mark.parametrize("n,k", [(5, 5), (60, 20), (300, 40)])
def test_basis_is_orthonormal_and_tridiagonalises(n, k):
    H, g = random_problem("indefinite", n, seed=n)
    res = lanczos(torch_matvec(H), torch.from_numpy(g), k)
    Q = torch.stack(res.basis, dim=1).numpy()
    T = tridiag(res)
    assert res.iterations == k and Q.shape == (n, k)
    assert np.abs(Q.T @ Q - np.eye(k)).max() < 1e-12
    assert np.abs(Q.T @ H @ Q - T).max() < 1e-10 * np.abs(H).max()
    assert np.allclose(Q[:, 0], g / np.linalg.norm(g), atol=1e-14)
    # H Q = Q T + beta_k q_{k+1} e_k^T: the residual of the relation is orthogonal to Q and has norm beta_k
    R = H @ Q - Q @ T
    if n > k:
        assert abs(np.linalg.norm(R[:, -1]) - res.betas[-1]) < 1e-10
        assert np.abs(R[:, :-1]).max() < 1e-10
    else:
        assert res.betas[-1] < 1e-8  # k = n: the whole space is invariant


def test_without_reorthogonalisation_loses_orthogonality_but_keeps_extreme_ritz_values():
    H, g = random_problem("spiked", 300, seed=1)
    plain = lanczos(torch_matvec(H), torch.from_numpy(g), 60, reorthogonalize=False)
    full = lanczos(torch_matvec(H), torch.from_numpy(g), 60)
    Q = torch.stack(plain.basis, dim=1).numpy()
    Qf = torch.stack(full.basis, dim=1).numpy()
    assert np.abs(Qf.T @ Qf - np.eye(60)).max() < 1e-12
    assert np.abs(Q.T @ Q - np.eye(60)).max() > 1e-6  # the textbook loss of orthogonality
    top = np.linalg.eigvalsh(H)[-1]
    assert abs(np.linalg.eigvalsh(tridiag(plain))[-1] - top) < 1e-8 * top


def test_breakdown_on_invariant_subspace():
    """H with 3 distinct eigenvalues: K(H, g) has dimension 3, Lanczos stops there, no division by ~0."""
    H = np.diag(np.r_[np.full(10, 1.0), np.full(10, -2.0), np.full(10, 5.0)])
    g = np.random.default_rng(0).standard_normal(30)
    res = lanczos(torch_matvec(H), torch.from_numpy(g), 20)
    assert res.breakdown and res.iterations == 3 and "breakdown" in res.message
    assert np.allclose(np.sort(np.linalg.eigvalsh(tridiag(res))), [-2.0, 1.0, 5.0], atol=1e-12)
    assert all(np.isfinite(res.alphas)) and all(np.isfinite(res.betas))
    assert len(res.basis) == 3
    # an eigenvector start breaks down at once
    e = torch.zeros(30, dtype=torch.float64)
    e[3] = 1.0
    one = lanczos(torch_matvec(H), e, 10)
    assert one.breakdown and one.iterations == 1 and abs(one.alphas[0] - 1.0) < 1e-15
    zero = lanczos(lambda v: torch.zeros_like(v), torch.ones(4, dtype=torch.float64), 3)
    assert zero.breakdown and zero.iterations == 1 and zero.alphas == [0.0]


@pytest.mark.parametrize("with_lincomb", [True, False])
def test_second_pass_reproduces_basis_with_O1_vectors(with_lincomb):
    H, g = random_problem("indefinite", 200, seed=5)
    space = OpaqueSpace(with_lincomb=with_lincomb)
    gh = space.wrap(torch.from_numpy(g))
    first = lanczos(space.matvec(H), gh, 30, space=space, reorthogonalize=False, store_basis=False)
    assert first.basis is None
    assert space.live == 1 and space.max_live <= 5  # only g left; at most q_prev, q, H q (+ a temporary)
    y = np.random.default_rng(1).standard_normal(30)
    space.max_live = space.live
    d = lanczos_combine(space.matvec(H), gh, first.alphas, first.betas, y, space=space)
    assert space.live == 2 and space.max_live <= 7
    stored = lanczos(torch_matvec(H), torch.from_numpy(g), 30, reorthogonalize=False)
    Q = torch.stack(stored.basis, dim=1).numpy()
    assert np.allclose(first.alphas, stored.alphas, rtol=1e-12)
    ref = Q @ y
    assert np.linalg.norm(space.unwrap(d).numpy() - ref) <= 1e-10 * np.linalg.norm(ref)


def test_lanczos_bad_input():
    ones = torch.ones(3, dtype=torch.float64)
    with pytest.raises(ConfigError, match="k="):
        lanczos(lambda v: v.clone(), ones, 0)
    with pytest.raises(NumericalError, match="zero"):
        lanczos(lambda v: v.clone(), torch.zeros(3), 2)
    with pytest.raises(NumericalError, match="non-finite"):
        lanczos(lambda v: v * float("nan"), ones, 2)
    with pytest.raises(ConfigError, match="shape"):
        lanczos(lambda v: torch.ones(2, dtype=v.dtype), ones, 2)
    with pytest.raises(ConfigError, match="coefficients"):
        lanczos_combine(lambda v: v.clone(), ones, [1.0], [0.5], [1.0, 2.0, 3.0])
