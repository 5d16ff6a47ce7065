"""Spectrum estimates for reports: extreme eigenvalues and stochastic Lanczos quadrature (SLQ) density.

SLQ (Golub-Meurant; Ghorbani, Krishnan and Xiao 2019 for network Hessians): for a probe v with E[v v^T] = I,
v^T f(H) v / |v|^2 ~= sum_j tau_j f(theta_j), with theta_j the Ritz values of k Lanczos steps from v and
tau_j = (U_{1j})^2 the squared first components of T's eigenvectors. Averaging over probes and taking
f = Gaussian kernel of width s gives a smoothed spectral density  rho(t) ~= 1/n sum_i N(t; lambda_i, s^2).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from dist_unlearn.errors import ConfigError
from dist_unlearn.linalg import Vector, VectorSpace
from dist_unlearn.solvers._vectors import Matvec, TimedMatvec, check_positive, random_like, resolve_space
from dist_unlearn.solvers.cubic import tridiagonal_eigh
from dist_unlearn.solvers.lanczos import LanczosProcess
from dist_unlearn.solvers.ties import at_most


def extreme_eigenvalues(
    matvec: Matvec,
    v0: Vector,
    k: int = 30,
    *,
    space: VectorSpace | None = None,
    tol: float = 1e-6,
    reorthogonalize: bool = True,
    stop: Callable[[int], bool] | None = None,
) -> tuple[float, float]:
    """Estimate (lambda_min, lambda_max) of H by the extreme Ritz values of up to k Lanczos steps from v0.

    Stops early at breakdown or when both extreme Ritz pairs have residual beta_k |U_kj| <= tol max|theta|.
    Ritz values lie inside [lambda_min, lambda_max], so the estimates are inner bounds.

    Args:
        matvec: v -> H v.
        v0: nonzero start vector (a random one finds both ends; g is biased to its own components).
        k: maximum matvecs.
        space: vector space; None means TensorSpace.
        tol: relative Ritz residual for the early stop.
        reorthogonalize: full reorthogonalisation (avoids ghost copies; O(k) vectors).
        stop: called as stop(j) after the j-th matvec; True ends the estimate there (a cost cap).

    Returns:
        (lambda_min, lambda_max) as floats.
    """
    space = resolve_space(space)
    k = check_positive("k", k, integer=True)
    tol = check_positive("tol", tol)
    proc = LanczosProcess(TimedMatvec(matvec), v0, space, reorthogonalize=reorthogonalize, keep_basis=False)
    theta = np.zeros(1)
    while proc.iterations < k and not proc.breakdown:
        proc.step()
        theta, u = tridiagonal_eigh(proc.alphas, proc.betas[:-1])
        scale = max(float(np.abs(theta).max()), 1e-300)
        res = abs(proc.betas[-1]) * np.abs(u[-1, [0, -1]])
        if proc.iterations >= 2 and all(at_most(float(r), tol * scale) for r in res):
            break
        if stop is not None and proc.iterations < k and stop(proc.iterations):
            break
    proc.release()
    return float(theta[0]), float(theta[-1])


def spectral_density(
    matvec: Matvec,
    dim_sample_vector: Vector,
    *,
    num_probes: int = 10,
    k: int = 30,
    grid: np.ndarray | None = None,
    num_points: int = 256,
    width: float | None = None,
    seed: int = 0,
    space: VectorSpace | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed spectral density of H by stochastic Lanczos quadrature with Rademacher probes.

    Args:
        matvec: v -> H v.
        dim_sample_vector: any vector of the space (gives the shape/placement of the probes).
        num_probes: number of random probes (cost: num_probes * k matvecs).
        k: Lanczos steps per probe.
        grid: evaluation points; default ``num_points`` points spanning the Ritz values +- 3 widths.
        num_points: size of the default grid.
        width: Gaussian kernel width; default 1% of the Ritz-value range (at least 1e-12).
        seed: seed of the probes (probe i uses seed + i).
        space: vector space; None means TensorSpace.

    Returns:
        (grid, density) numpy float64 arrays; the density integrates to ~1 (a probability density).
    """
    space = resolve_space(space)
    num_probes = check_positive("num_probes", num_probes, integer=True)
    k = check_positive("k", k, integer=True)
    nodes, weights = [], []
    for i in range(num_probes):
        v = random_like(space, dim_sample_vector, seed + i, kind="rademacher")
        proc = LanczosProcess(
            TimedMatvec(matvec), v, space, reorthogonalize=True, keep_basis=True, what="probe"
        )
        space.release(v)
        while proc.iterations < k and not proc.breakdown:
            proc.step()
        proc.release()
        theta, u = tridiagonal_eigh(proc.alphas, proc.betas[:-1])
        nodes.append(theta)
        weights.append(u[0, :] ** 2 / num_probes)
    t = np.concatenate(nodes)
    w = np.concatenate(weights)
    lo, hi = float(t.min()), float(t.max())
    if width is None:
        width = max(0.01 * (hi - lo), 1e-12 * max(1.0, abs(hi)))
    elif not (math.isfinite(width) and width > 0):
        raise ConfigError(f"width={width!r} is not allowed; it must be a finite number > 0.")
    if grid is None:
        grid = np.linspace(lo - 3 * width, hi + 3 * width, int(num_points))
    grid = np.asarray(grid, dtype=np.float64)
    diff = (grid[:, None] - t[None, :]) / width
    density = (np.exp(-0.5 * diff * diff) * w[None, :]).sum(axis=1) / (width * math.sqrt(2 * math.pi))
    return grid, density
