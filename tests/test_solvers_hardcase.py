"""The true hard case of ``cubic_subproblem``: the automatic probe (default ``hard_case_probe="auto"``),
the two-block solve, and what the probe costs on ordinary problems.

Reference: the dense float64 eigendecomposition + secular-equation solve of tests/test_solvers_reference.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dist_unlearn.errors import ConfigError
from dist_unlearn.solvers import cubic_subproblem
from tests.test_solvers_reference import dense_cubic, exact_hard_case, model, random_problem, torch_matvec


def _true_hard_case(seed: int, n: int = 40):
    rng = np.random.default_rng(seed)
    ev = np.sort(rng.uniform(-1.0, 8.0, n))
    ev[0] = -3.0
    perm = rng.permutation(n)  # u_min is a coordinate vector; exact zeros keep Krylov(H, g) off it
    H = np.diag(ev[perm])
    g = 0.01 * rng.standard_normal(n)
    g[int(np.argmin(ev[perm]))] = 0.0
    return H, g


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_default_finds_the_global_minimiser_in_the_true_hard_case(seed):
    H, g = _true_hard_case(seed)
    d_ref, lam_ref, hard = dense_cubic(H, g, 1.0)
    assert hard
    off = cubic_subproblem(torch_matvec(H), torch.from_numpy(g), 1.0, tol=1e-9, hard_case_probe=0)
    res = cubic_subproblem(torch_matvec(H), torch.from_numpy(g), 1.0, tol=1e-9)
    m_ref = model(H, g, 1.0, d_ref)
    assert off.model_value > m_ref + 0.1 * abs(m_ref)  # without the probe: a worse stationary point
    assert res.hard_case and "hard case" in res.message
    d = res.step.double().numpy()
    assert model(H, g, 1.0, d) == pytest.approx(m_ref, rel=1e-6)
    assert res.multiplier == pytest.approx(lam_ref, rel=1e-6)


ORDINARY_HVPS_BEFORE = 2190
"""HVPs of the 120 ordinary solves below with the previous default (a 5-matvec probe only when T_k was
indefinite and lambda <= 1.5 (-theta_min); commit 21a0dc8). The hard-case target allows 10% more."""


def test_default_probe_costs_at_most_ten_percent_more_hvps_on_ordinary_problems():
    """PD, indefinite, spiked, singular problems with generic g: the answer matches the dense reference, no
    false hard case, and the automatic probe keeps the total within 1.10x the previous default's (measured
    2400 = +9.6%; benchmarks/hard_case_bench.py)."""
    total = 0
    for kind in ("pd", "indefinite", "spiked", "singular"):
        for seed in range(10):
            for M in (0.1, 1.0, 10.0):
                H, g = random_problem(kind, 100, seed)
                res = cubic_subproblem(torch_matvec(H), torch.from_numpy(g), M)
                d_ref, _, _ = dense_cubic(H, g, M)
                m_ref = model(H, g, M, d_ref)
                assert model(H, g, M, res.step.double().numpy()) <= m_ref + 1e-5 * abs(m_ref) + 1e-12
                assert not res.hard_case
                total += res.hvps
    assert total <= 1.10 * ORDINARY_HVPS_BEFORE, total


@pytest.mark.parametrize("n", [20, 100, 400])
def test_default_reaches_the_bound_on_exact_hard_cases_with_small_M(n):
    """M = 0.1 (the solution is dominated by the hidden negative curvature): within 1e-4 of the dense
    global minimum at the defaults, simple and triple leftmost eigenvalue, indefinite or PD rest."""
    for mult in (1, 3):
        for rest in ((-1.0, 8.0), (0.1, 8.0)):
            H, g = exact_hard_case(n, 0, mult, rest)
            d_ref, _, hard = dense_cubic(H, g, 0.1)
            assert hard
            res = cubic_subproblem(torch_matvec(H), torch.from_numpy(g), 0.1)
            m_ref = model(H, g, 0.1, d_ref)
            assert model(H, g, 0.1, res.step.double().numpy()) <= m_ref + 1e-4 * abs(m_ref)


@pytest.mark.parametrize("n,M", [(60, 1.0), (100, 10.0), (400, 100.0)])
def test_once_found_the_two_block_solve_reaches_the_bound(n, M):
    """With a probe long enough to find the hidden eigenvalue (hard_case_probe=20), the joint solve on both
    blocks is within 1e-4 of the global minimum, also where the automatic probe misses it (these three are
    among its 16 misses of 160 in benchmarks/hard_case_bench.py)."""
    H, g = exact_hard_case(n, 0, 1, (0.1, 8.0) if M != 100.0 else (-1.0, 8.0))
    d_ref, lam_ref, hard = dense_cubic(H, g, M)
    assert hard
    res = cubic_subproblem(torch_matvec(H), torch.from_numpy(g), M, hard_case_probe=20)
    assert res.hard_case and res.multiplier == pytest.approx(lam_ref, rel=1e-6)
    m_ref = model(H, g, M, d_ref)
    assert model(H, g, M, res.step.double().numpy()) <= m_ref + 1e-4 * abs(m_ref)


@pytest.mark.parametrize("bad", ["always", True, 2.5, -1])
def test_bad_probe_values_raise(bad):
    with pytest.raises(ConfigError, match="hard_case_probe"):
        cubic_subproblem(lambda v: v.clone(), torch.ones(3), 1.0, hard_case_probe=bad)
