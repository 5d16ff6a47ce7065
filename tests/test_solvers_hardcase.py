"""The automatic true-hard-case guard of ``cubic_subproblem`` (default ``hard_case_probe="auto"``).

Reference: the dense float64 eigendecomposition + secular-equation solve of tests/test_solvers_reference.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dist_unlearn.errors import ConfigError
from dist_unlearn.solvers import cubic_subproblem
from tests.test_solvers_reference import dense_cubic, model, random_problem, torch_matvec


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


def test_guard_costs_under_ten_percent_extra_hvps_on_ordinary_problems():
    """PD, indefinite, spiked, singular problems with generic g: the answer matches the dense reference and
    the guard's probes add < 10% HVPs over hard_case_probe=0 (measured 4.8%)."""
    base = total = 0
    for kind in ("pd", "indefinite", "spiked", "singular"):
        for seed in range(10):
            for M in (0.1, 1.0, 10.0):
                H, g = random_problem(kind, 100, seed)
                off = cubic_subproblem(torch_matvec(H), torch.from_numpy(g), M, hard_case_probe=0)
                res = cubic_subproblem(torch_matvec(H), torch.from_numpy(g), M)
                d_ref, _, _ = dense_cubic(H, g, M)
                m_ref = model(H, g, M, d_ref)
                assert model(H, g, M, res.step.double().numpy()) <= m_ref + 1e-5 * abs(m_ref) + 1e-12
                base, total = base + off.hvps, total + res.hvps
    assert (total - base) / base < 0.10


@pytest.mark.parametrize("bad", ["always", True, 2.5, -1])
def test_bad_probe_values_raise(bad):
    with pytest.raises(ConfigError, match="hard_case_probe"):
        cubic_subproblem(lambda v: v.clone(), torch.ones(3), 1.0, hard_case_probe=bad)
