"""The cubic subproblem in a small basis, solved in float64 (GLRT / Cartis-Gould-Toint ARC style).

In the Lanczos basis the problem is  min_y  b.y + 1/2 y.T y + (sigma/3)|y|^3  with sigma = M/2, b = |g| e_1
and T symmetric tridiagonal (block-diagonal after a restart). Its global minimiser satisfies

    (T + lambda I) y = -b,   lambda = sigma |y|,   T + lambda I >= 0.

With T = U diag(theta) U^T (theta ascending) and c = U^T b, y(lambda) = -U (c / (theta + lambda)). Writing
lambda = lambda_L + mu with lambda_L = max(0, -theta_1) and shifted eigenvalues d = theta + lambda_L >= 0,
mu > 0 solves the secular equation

    phi(mu) = 1/|y(mu)| - sigma/(lambda_L + mu) = 0,

which is increasing and concave on mu > 0: Newton's method started left of the root (phi < 0) increases
monotonically to it. The start is the largest of several cheap lower bounds (|y| >= |c_i|/(d_i + mu) and
|y| >= |c|/(d_max + mu)); an upper bound (|y| <= |c|/(d_1 + mu)) guards the iteration with bisection.
Working in mu keeps full relative accuracy next to the pole at mu = 0.

Hard case: c has (numerically) no component on the leftmost eigenspace and sigma |y_hc| <= lambda_L with
y_hc = -sum_{d_i>0} c_i/d_i u_i. Then lambda = lambda_L and y = y_hc + tau u_1 with tau chosen so that
|y| = lambda_L/sigma (u_1 the leftmost eigenvector of T).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg import eigh_tridiagonal
from scipy.linalg.lapack import dpttrf, dpttrs

from dist_unlearn.errors import NumericalError

_EPS = np.finfo(np.float64).eps
HARD_CASE_RTOL = 1e-13
"""|c on the leftmost eigenspace| <= HARD_CASE_RTOL |c| counts as zero (the hard case)."""


@dataclass
class EigSolution:
    """Solution in the eigenbasis of T: z = U^T y."""

    z: np.ndarray
    multiplier: float
    hard_case: bool
    newton_iterations: int


def _pos_root(p: np.ndarray | float, q: np.ndarray | float) -> np.ndarray:
    """Positive root of x^2 + p x - q = 0 where q > 0, and 0 where q <= 0 (cancellation-free)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    qp = np.maximum(q, 0.0)
    disc = np.sqrt(p * p + 4.0 * qp)
    with np.errstate(divide="ignore", invalid="ignore"):
        root = np.where(p >= 0, 2.0 * qp / (p + disc), 0.5 * (disc - p))
    return np.where(q > 0, root, 0.0)


def solve_cubic_eig(theta: np.ndarray, c: np.ndarray, sigma: float, max_newton: int = 100) -> EigSolution:
    """Global minimiser of c.z + 1/2 sum theta_i z_i^2 + (sigma/3)|z|^3 (diagonal form of the subproblem).

    Args:
        theta: eigenvalues of T, ascending.
        c: U^T b, the linear term in the eigenbasis.
        sigma: M/2 > 0.
        max_newton: cap on Newton/bisection steps.

    Returns:
        EigSolution with z, lambda, the hard-case flag and the number of Newton steps.
    """
    theta = np.asarray(theta, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    cnorm = float(np.linalg.norm(c))
    lam_low = max(0.0, -float(theta[0]))
    d = theta + lam_low
    d[0] = max(d[0], 0.0)
    d = np.maximum(d, 0.0)
    if lam_low > 0.0:
        zero = d <= 1e-12 * max(float(d[-1]), lam_low)
        cz = float(np.linalg.norm(c[zero]))
        if cz <= HARD_CASE_RTOL * cnorm:
            rest = ~zero
            y_hc = -c[rest] / d[rest]
            n_hc = float(np.linalg.norm(y_hc))
            radius = lam_low / sigma
            if n_hc <= radius:
                tau = math.sqrt(max((radius - n_hc) * (radius + n_hc), 0.0))
                z = np.zeros_like(c)
                z[rest] = y_hc
                if cz > 0.0:
                    z[zero] = -c[zero] / cz * tau
                else:
                    z[0] = tau
                return EigSolution(z=z, multiplier=lam_low, hard_case=True, newton_iterations=0)
    if cnorm == 0.0:  # b = 0 and T >= 0: d = 0 is the minimiser
        return EigSolution(z=np.zeros_like(c), multiplier=0.0, hard_case=False, newton_iterations=0)
    nz = c != 0.0
    cn, dn = c[nz], d[nz]
    abs_c = np.abs(cn)
    lows = _pos_root(lam_low + dn, sigma * abs_c - lam_low * dn)
    low_all = _pos_root(lam_low + d[-1], sigma * cnorm - lam_low * d[-1])
    lo = float(max(float(lows.max()), float(low_all)))
    hi = float(_pos_root(lam_low + d[0], sigma * cnorm - lam_low * d[0]))
    hi = max(hi, lo)
    mu = lo
    it = 0
    for it in range(1, max_newton + 1):  # noqa: B007
        den = dn + mu
        if np.any(den <= 0.0):  # only when lo == 0 and c touches a zero shift: step inside
            mu = 0.5 * (mu + hi) if hi > mu else max(mu, 1e-300) * 2.0
            continue
        s2 = (cn / den) ** 2
        ns2 = float(s2.sum())
        ns = math.sqrt(ns2)
        lam = lam_low + mu
        phi = 1.0 / ns - sigma / lam
        if phi >= 0.0:
            hi = min(hi, mu)
            if phi <= 4 * _EPS * (1.0 / ns + sigma / lam) or mu <= lo:
                break
            mu = 0.5 * (lo + hi)
            continue
        lo = mu
        dphi = float((s2 / den).sum()) / (ns2 * ns) + sigma / (lam * lam)
        new = mu - phi / dphi
        if not (new > mu and new <= hi):
            new = 0.5 * (mu + hi)
        if new - mu <= 4 * _EPS * new:
            mu = new
            break
        mu = new
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(nz, -c / (d + mu), 0.0)
    if not np.all(np.isfinite(z)):
        raise NumericalError(f"cubic subproblem: non-finite solution (lambda_low={lam_low}, mu={mu}).")
    return EigSolution(z=z, multiplier=lam_low + mu, hard_case=False, newton_iterations=it)


@dataclass
class TridiagonalSolution:
    """Solution of the small subproblem in the Lanczos basis."""

    y: np.ndarray
    multiplier: float
    hard_case: bool
    model_value: float
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray


def tridiagonal_eigh(alphas: Sequence[float], betas: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of tridiag(betas; alphas; betas), len(betas) = k-1."""
    a = np.asarray(alphas, dtype=np.float64)
    if a.size == 1:
        return a.copy(), np.ones((1, 1))
    b = np.asarray(betas[: a.size - 1], dtype=np.float64)
    try:
        return eigh_tridiagonal(a, b)
    except Exception:  # LAPACK stemr can refuse rare inputs; the dense solver is the fallback
        t = np.diag(a) + np.diag(b, 1) + np.diag(b, -1)
        return np.linalg.eigh(t)


def solve_tridiagonal_cubic(
    blocks: Sequence[tuple[Sequence[float], Sequence[float]]], gnorm: float, M: float
) -> TridiagonalSolution:
    """Global minimiser of gnorm*y_1 + 1/2 y.T y + (M/6)|y|^3, T = blockdiag(tridiag blocks), float64.

    Args:
        blocks: (alphas, betas) per diagonal block; betas has len(alphas)-1 off-diagonals. The linear term
            touches the first block (later blocks come from restarts orthogonal to g).
        gnorm: |g| (b = gnorm e_1).
        M: cubic weight (> 0).

    Returns:
        TridiagonalSolution (y in the concatenated block coordinates).
    """
    thetas, vecs, cs = [], [], []
    for i, (al, be) in enumerate(blocks):
        th, u = tridiagonal_eigh(al, be)
        thetas.append(th)
        vecs.append(u)
        cs.append(gnorm * u[0, :] if i == 0 else np.zeros_like(th))
    theta = np.concatenate(thetas)
    c = np.concatenate(cs)
    order = np.argsort(theta, kind="stable")
    sigma = 0.5 * M
    sol = solve_cubic_eig(theta[order], c[order], sigma)
    z = np.empty_like(sol.z)
    z[order] = sol.z
    ys, start = [], 0
    for u in vecs:
        n = u.shape[1]
        ys.append(u @ z[start : start + n])
        start += n
    y = np.concatenate(ys)
    zn = float(np.linalg.norm(z))
    model = float(c @ z + 0.5 * (theta * z * z).sum() + sigma / 3.0 * zn**3)
    return TridiagonalSolution(
        y=y,
        multiplier=sol.multiplier,
        hard_case=sol.hard_case,
        model_value=model,
        eigenvalues=theta[order],
        eigenvectors=np.zeros((0, 0)) if len(vecs) > 1 else vecs[0],
    )


@dataclass
class QuickSolution:
    """Easy-case solution from factorisations only (no eigenvectors): what the per-iteration check needs."""

    y: np.ndarray
    multiplier: float
    model_value: float


def quick_tridiagonal_cubic(
    alphas: Sequence[float], betas: Sequence[float], gnorm: float, M: float, lam0: float, max_newton: int = 30
) -> QuickSolution | None:
    """Easy-case solve of the tridiagonal subproblem in O(k) per Newton step (Cholesky, GLRT style).

    Newton on phi(lambda) = 1/|y(lambda)| - sigma/lambda with (T + lambda I) y = -gnorm e_1 solved by the
    LDL^T factorisation of the tridiagonal T + lambda I (LAPACK pttrf/pttrs); a failed factorisation means
    lambda < -theta_min and moves the lower end of the bracket. Warm-started at ``lam0`` (the previous
    multiplier), it needs 2-4 steps, against O(k^3) for the eigendecomposition used by
    :func:`solve_tridiagonal_cubic`. Returns None when it does not converge fast (near the hard case); the
    caller then falls back to the eigendecomposition.
    """
    a = np.asarray(alphas, dtype=np.float64)
    e = np.asarray(betas[: a.size - 1], dtype=np.float64)
    sigma = 0.5 * M
    rhs = np.zeros((a.size, 1))
    rhs[0, 0] = -gnorm
    lo, hi = 0.0, math.inf
    lam = lam0 if lam0 > 0 else math.sqrt(sigma * gnorm)
    for _ in range(max_newton):
        dd, ee, info = dpttrf(a + lam, e)
        if info != 0:  # T + lam I not positive definite: the root is to the right
            lo = max(lo, lam)
            lam = 0.5 * (lo + hi) if hi < math.inf else 2.0 * lam + 1e-300
            continue
        y = dpttrs(dd, ee, rhs)[0]
        x = dpttrs(dd, ee, y)[0]
        y = y[:, 0]
        ny2 = float(y @ y)
        ny = math.sqrt(ny2)
        phi = 1.0 / ny - sigma / lam
        if phi > 0:
            hi = min(hi, lam)
        else:
            lo = max(lo, lam)
        dphi = float(y @ x[:, 0]) / (ny2 * ny) + sigma / (lam * lam)
        new = lam - phi / dphi
        if abs(new - lam) <= 1e-12 * lam:
            model = 0.5 * gnorm * float(y[0]) - 0.5 * lam * ny2 + sigma / 3.0 * ny2 * ny
            return QuickSolution(y=y, multiplier=lam, model_value=model)
        if not lo < new < hi:
            new = 0.5 * (lo + hi) if hi < math.inf else 2.0 * lam
        lam = new
    return None


def last_component(alphas: Sequence[float], betas: Sequence[float], gnorm: float, lam: float) -> float | None:
    """|e_k^T (T + lam I)^{-1} gnorm e_1| by the pivots of LDL^T (pure Python, O(k)); None if not PD.

    Cramer's rule gives [(T + lam I)^{-1}]_{k1} = +-prod(beta_1..beta_{k-1}) / det(T + lam I), and
    det = prod of the pivots d_1 = alpha_1 + lam, d_{i+1} = alpha_{i+1} + lam - beta_i^2 / d_i.
    """
    d = alphas[0] + lam
    if not d > 0.0:
        return None
    value = gnorm / d
    for i in range(1, len(alphas)):
        b = betas[i - 1]
        d = alphas[i] + lam - b * b / d
        if not d > 0.0:
            return None
        value *= b / d
    return value
