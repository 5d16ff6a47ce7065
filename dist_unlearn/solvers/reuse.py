r"""Curvature kept across outer steps: the cubic model of a new point on a Lanczos basis built earlier.

At a point w_0 Lanczos from g_0 gives an orthonormal basis Q = [q_1..q_k] and T = Q^T H_0 Q (tridiagonal,
:class:`~dist_unlearn.solvers.resolve.KrylovSpace`). Around a fine-tuned model the Hessian changes slowly,
so a later outer step, at w with gradient g, can keep that curvature instead of paying k new Hessian-vector
products: its cubic model uses

    B = Q T Q^T + sigma_c (I - Q Q^T),

H_0 on the kept space and a constant curvature ``sigma_c`` (default 0: flat) on its complement. With
a = Q^T g, r = g - Q a and rho = |r|, B maps span(Q, r) to itself: in the orthonormal basis [Q, r / rho] it is
blockdiag(T, sigma_c) and g has coordinates (a, rho). The model

    m(d) = g.d + 1/2 d.B d + (M/6)|d|^3

is minimised over that (k+1)-dimensional space (its global minimiser lies there except in a hard case of
the complement, as for any Krylov method): with T = V diag(theta) V^T, the diagonal problem in coordinates
z = (V^T y_Q, y_r), linear term c = (V^T a, rho) and eigenvalues (theta, sigma_c) is solved by
:func:`~dist_unlearn.solvers.cubic.solve_cubic_eig` in float64 (secular equation, hard case of the small
problem included), and d = Q V z_Q + (z_r / rho) r.

Cost: k dot products (one ``dots`` op) and two linear combinations per projection -- no matvec; rho comes
from Pythagoras (|g|^2 - |Q^T g|^2, Q orthonormal) unless that difference is within
:data:`PYTHAGORAS_MIN_SHARE` of |g|^2, where cancellation would spoil it and a norm is computed.
Where the Hessian has not changed and the kept space is invariant under it (Lanczos broke down),
B = H on span(Q, r) and the step is the one a fresh solve gives (tests/test_curvature_reuse.py).
At the basis' own gradient (g = |g_0| q_1) the projection is exact and the solve is
:func:`~dist_unlearn.solvers.resolve.resolve_cubic`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dist_unlearn.errors import ConfigError
from dist_unlearn.linalg import Vector, VectorSpace
from dist_unlearn.solvers._vectors import (
    Matvec,
    TimedMatvec,
    check_positive,
    combine,
    many_dots,
    release_all,
    resolve_space,
    vector_norm,
)
from dist_unlearn.solvers.cubic import solve_cubic_eig, tridiagonal_eigh
from dist_unlearn.solvers.lanczos import DEFAULT_BREAKDOWN_TOL, LanczosProcess
from dist_unlearn.solvers.resolve import KrylovSpace, resolve_cubic
from dist_unlearn.solvers.results import CubicResult

COMPLEMENT_RTOL = 1e-10
"""rho <= COMPLEMENT_RTOL |g| counts as g inside the kept space (the complement direction is dropped)."""

PYTHAGORAS_MIN_SHARE = 1e-4
"""rho^2 = |g|^2 - |Q^T g|^2 is used when it is at least this share of |g|^2: its rounding error (about
1e-14 |g|^2 with a reorthogonalised basis) is then below 1e-10 of rho^2. Below it, |r| is computed (one more
round trip on a sharded space)."""


def krylov_basis(
    matvec: Matvec,
    g: Vector,
    k: int,
    *,
    space: VectorSpace | None = None,
    stop: Callable[..., bool] | None = None,
    breakdown_tol: float = DEFAULT_BREAKDOWN_TOL,
) -> KrylovSpace:
    """Lanczos from g with full reorthogonalisation: the basis and T of K_k(H, g), kept for later solves.

    Args:
        matvec: v -> H v (deterministic, returns a new vector).
        g: the start vector (the gradient; not modified).
        k: Lanczos iterations (matvecs), fewer on breakdown.
        space: the vector space of g (None: TensorSpace).
        stop: ``stop(j)`` after the j-th iteration; True ends the process there (a cost cap).
        breakdown_tol: relative breakdown threshold.

    Returns:
        KrylovSpace owning q_1..q_j (release it when done).
    """
    space = resolve_space(space)
    gnorm = vector_norm(space, g, "g")
    if gnorm == 0.0:
        raise ConfigError("krylov_basis: g = 0 spans no Krylov space.")
    mv = TimedMatvec(matvec)
    proc = LanczosProcess(
        mv, g, space, reorthogonalize=True, keep_basis=True, breakdown_tol=breakdown_tol, v0_norm=gnorm
    )
    while proc.iterations < k and not proc.breakdown:
        proc.step()
        if proc.iterations < k and not proc.breakdown and stop is not None and stop(proc.iterations):
            break
    j = proc.iterations
    kept, tail = proc.basis[:j], proc.basis[j:]
    proc.release(keep_basis=True)
    release_all(space, tail)
    return KrylovSpace(list(proc.alphas), list(proc.betas), kept, gnorm, space, proc.breakdown)


@dataclass
class ProjectedSpace:
    """A kept basis seen from a gradient g: its coordinates and the complement direction (owns only r).

    Attributes:
        basis: the kept :class:`KrylovSpace` (not owned: releasing this view leaves it alive).
        coords: a = Q^T g (float64).
        residual: r = g - Q a, or None when g lies in the kept space (or is the basis' own start vector).
        rnorm: |r|.
        gnorm: |g|.
        own: g is the vector the basis was built from (solves are exact re-solves on it).
        complement_curvature: sigma_c, the curvature assumed off the kept space.
    """

    basis: KrylovSpace
    coords: np.ndarray
    residual: Vector | None
    rnorm: float
    gnorm: float
    own: bool = False
    complement_curvature: float = 0.0
    released: bool = field(default=False, repr=False)

    @property
    def dimension(self) -> int:
        return self.basis.dimension + (self.residual is not None)

    def release(self) -> None:
        """Free r (the basis stays with its owner)."""
        if not self.released and self.residual is not None:
            self.basis.space.release(self.residual)
        self.residual, self.released = None, True


def own_view(basis: KrylovSpace, complement_curvature: float = 0.0) -> ProjectedSpace:
    """The view of a basis from its own start vector g_0 = |g_0| q_1 (no vector operation)."""
    coords = np.zeros(basis.dimension)
    coords[0] = basis.gnorm
    return ProjectedSpace(basis, coords, None, 0.0, basis.gnorm, True, complement_curvature)


def project(basis: KrylovSpace, g: Vector, complement_curvature: float = 0.0) -> ProjectedSpace:
    """The coordinates of a new gradient on a kept basis (one ``dots``, one lincomb, one norm).

    Raises:
        ConfigError: the basis was released.
    """
    if basis.released:
        raise ConfigError("project: the kept Krylov basis was released.")
    space = basis.space
    gnorm = vector_norm(space, g, "g")
    Q = basis.basis[: basis.dimension]
    coords = np.asarray(many_dots(space, g, Q), dtype=np.float64)
    r = combine(space, [1.0, *(-coords)], [g, *Q])
    sq = gnorm * gnorm - float(coords @ coords)
    rnorm = math.sqrt(sq) if sq >= PYTHAGORAS_MIN_SHARE * gnorm * gnorm else float(space.norm(r))
    if not rnorm > COMPLEMENT_RTOL * gnorm:
        space.release(r)
        r, rnorm = None, 0.0
    return ProjectedSpace(basis, coords, r, rnorm, gnorm, False, float(complement_curvature))


def solve_projected(view: ProjectedSpace, M: float) -> CubicResult:
    """The minimiser of the kept-curvature cubic model (module docstring) over span(Q, r), for weight M.

    Returns:
        CubicResult with ``hvps=0``, ``converged=True`` (exact for the model B), ``step`` a new vector.

    Raises:
        ConfigError: M not a finite positive number, or the view / its basis was released.
    """
    if view.own:
        res = resolve_cubic(view.basis, M)
        res.converged = True
        return res
    start = time.perf_counter()
    M = check_positive("M", M)
    basis = view.basis
    if basis.released or view.released:
        raise ConfigError("solve_projected: the kept basis or its projection was released.")
    k = basis.dimension
    # blockdiag(T, sigma_c) in the basis [Q, r / rho]: eigenpairs of T plus (sigma_c, the complement)
    theta, U = tridiagonal_eigh(basis.alphas, basis.betas[:-1])
    thetas, c = theta, U.T @ view.coords
    if view.residual is not None:
        thetas, c = np.append(theta, view.complement_curvature), np.append(c, view.rnorm)
    order = np.argsort(thetas, kind="stable")
    sol = solve_cubic_eig(thetas[order], c[order], 0.5 * M)
    z = np.empty_like(sol.z)
    z[order] = sol.z
    y = U @ z[:k]
    coeffs, vectors = list(y), list(basis.basis[:k])
    if view.residual is not None:
        coeffs.append(float(z[k]) / view.rnorm)
        vectors.append(view.residual)
    step = combine(basis.space, coeffs, vectors)
    znorm = float(np.linalg.norm(z))
    model = float(c @ z + 0.5 * (thetas * z * z).sum() + M / 6.0 * znorm**3)
    return CubicResult(
        step=step,
        multiplier=float(sol.multiplier),
        step_norm=znorm,
        model_value=model,
        iterations=0,
        hard_case=bool(sol.hard_case),
        converged=True,
        hvps=0,
        residual=0.0,
        message=(
            f"solved on the kept {k}-dimensional Lanczos basis + the gradient's complement "
            f"(|r|/|g| = {view.rnorm / view.gnorm:.3g}; no matvec)"
        ),
        coefficients=[float(v) for v in y],
        alphas=list(basis.alphas),
        betas=list(basis.betas),
        solver_time=time.perf_counter() - start,
    )
