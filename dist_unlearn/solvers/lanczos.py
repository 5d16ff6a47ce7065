"""Lanczos tridiagonalisation on the VectorSpace protocol.

From a start vector v0 the Lanczos process builds an orthonormal basis Q_k = [q_1..q_k] of the Krylov space
K_k(H, v0) and the tridiagonal T_k = Q_k^T H Q_k, with

    H Q_k = Q_k T_k + beta_k q_{k+1} e_k^T,   T_k = tridiag(beta_{1..k-1}; alpha_{1..k}; beta_{1..k-1}).

Only scalars (alpha_j, beta_j: Python floats) are kept on the caller's side; vectors stay in the space. One
iteration costs 1 matvec + 1 dot + 1 lincomb (or 2 axpys) + 1 norm + 1 scale; full reorthogonalisation adds
k dots (one op with the optional ``space.dots``) and 1 lincomb (classical Gram-Schmidt against the stored
basis, after the three-term recurrence).

Breakdown: when beta_k <= tol * ||T||_est the Krylov space is invariant under H (to working precision); the
process stops instead of dividing by ~0, and anything solved in that space is exact.

Without reorthogonalisation and without a stored basis, only three vectors are alive (q_{j-1}, q_j, H q_j);
:func:`lanczos_combine` then rebuilds ``Q y`` in a second pass from the stored alphas/betas with the same
operations in the same order, so for a deterministic matvec the basis is reproduced exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from dist_unlearn.errors import ConfigError, NumericalError
from dist_unlearn.linalg import Vector, VectorSpace
from dist_unlearn.solvers._vectors import (
    Matvec,
    TimedMatvec,
    check_positive,
    checked_dot,
    combine,
    fused_lanczos_step,
    many_dots,
    release_all,
    resolve_space,
    subtract,
    vector_norm,
)
from dist_unlearn.solvers.results import LanczosResult

DEFAULT_BREAKDOWN_TOL = 1e-10
"""beta_k <= tol * ||T||_est counts as an invariant subspace (relative to the largest |alpha|+|beta| seen)."""

LOCKED_SPAN_RTOL = 1e-10
"""A start vector projected off the locked vectors to below this share of its length was inside their span
(what is left is rounding noise): the locked block spans the whole space and a new block has nowhere to go."""


class LanczosProcess:
    """One Lanczos run, advanced one matvec at a time by :meth:`step` (used by every Krylov solver here).

    Args:
        matvec: v -> H v, H symmetric; must return a NEW vector and be deterministic.
        v0: start vector (not modified).
        space: the vector space.
        reorthogonalize: orthogonalise each new vector against the whole basis (and ``locked``).
        keep_basis: keep q_1..q_k alive (forced on by ``reorthogonalize``).
        breakdown_tol: relative breakdown threshold.
        v0_norm: |v0| when the caller already has it (saves one op).
        locked: vectors (orthonormal) the new basis must stay orthogonal to (restart of a second block).
        what: name of v0 in error messages.
        watch: vectors whose dots with every basis vector are recorded in :attr:`watched` (row j: q_{j+1};
            computed inside the fused iteration on a sharded oracle, so they cost no extra round trip).
    """

    def __init__(
        self,
        matvec: Matvec,
        v0: Vector,
        space: VectorSpace,
        *,
        reorthogonalize: bool = True,
        keep_basis: bool = True,
        breakdown_tol: float = DEFAULT_BREAKDOWN_TOL,
        v0_norm: float | None = None,
        locked: Sequence[Vector] = (),
        what: str = "v0",
        watch: Sequence[Vector] = (),
    ) -> None:
        self.matvec = matvec
        self.space = space
        self.reorthogonalize = reorthogonalize
        self.keep_basis = keep_basis or reorthogonalize
        self.breakdown_tol = breakdown_tol
        self.locked = list(locked)
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.breakdown = False
        self._tnorm = 0.0
        self.watch = list(watch)
        self.watched: list[list[float]] = []  # row j: dots of q_{j+1} with the watch vectors
        start_block = getattr(space, "orthonormal_start", None) if self.locked else None
        if start_block is not None:  # the space does the projection below in one call (a sharded space)
            q, norm, watched = start_block(v0, self.locked, self.watch)
            if not math.isfinite(norm):
                raise NumericalError(f"{what} has non-finite entries (NaN or inf); it must be finite.")
            if norm == 0.0:
                raise NumericalError(
                    f"Lanczos start vector {what} is zero (after projection); it must be nonzero."
                )
            self.q: Vector = q
            if self.watch:
                self.watched.append([float(x) for x in watched])
        else:
            start = v0
            before = v0_norm
            if self.locked:  # project v0 off the locked vectors (twice: "twice is enough")
                before = vector_norm(space, v0, what) if before is None else before
                start = space.copy(v0)
                for _ in range(2):
                    coeffs = many_dots(space, start, self.locked)
                    start = subtract(space, start, coeffs, self.locked)
                v0_norm = None
            norm = vector_norm(space, start, what) if v0_norm is None else v0_norm
            # what is left of v0 after the projection is rounding noise: the locked vectors span the space
            if norm == 0.0 or (self.locked and norm <= LOCKED_SPAN_RTOL * before):
                if start is not v0:
                    space.release(start)
                raise NumericalError(
                    f"Lanczos start vector {what} is zero (after projection); it must be nonzero."
                )
            self.q = combine(space, [1.0 / norm], [start])
            if start is not v0:
                space.release(start)
            if self.watch:
                self.watched.append(many_dots(space, self.q, self.watch))
        self.q_prev: Vector | None = None
        self.basis: list[Vector] | None = [self.q] if self.keep_basis else None
        self.coupling: list[float] = []  # dots of each H q_j with locked[-1] (restart blocks only)

    @property
    def iterations(self) -> int:
        return len(self.alphas)

    @property
    def krylov_basis(self) -> list[Vector]:
        """q_1..q_k (the kept basis also holds q_{k+1} = ``self.q`` until the process is released)."""
        return [] if self.basis is None else self.basis[: self.iterations]

    def step(self) -> None:
        """Apply H once, append alpha_j and beta_j, and form q_{j+1} unless the space became invariant."""
        if self.breakdown:
            raise NumericalError("Lanczos step after breakdown: the Krylov space is already invariant.")
        space, q = self.space, self.q
        j = len(self.alphas) + 1
        fused = fused_lanczos_step(self.matvec)
        if fused is not None:
            self._fused_step(fused, j)
            return
        w = self.matvec(q)
        if w is q:
            w = space.copy(w)
        what = f"matvec output at Lanczos iteration {j}"
        alpha = checked_dot(space, q, w, what)
        beta_prev = self.betas[-1] if self.betas else 0.0
        if self.q_prev is None:
            w = subtract(space, w, [alpha], [q])
        else:
            w = subtract(space, w, [alpha, beta_prev], [q, self.q_prev])
        if self.reorthogonalize:
            others = self.locked + self.basis  # type: ignore[operator]
            coeffs = many_dots(space, w, others)
            if self.locked:
                self.coupling.append(coeffs[len(self.locked) - 1])
            w = subtract(space, w, coeffs, others)
        beta = space.norm(w)
        if not math.isfinite(beta):
            raise NumericalError(
                f"{what} has non-finite entries (NaN or inf); the matvec must return finite values."
            )
        self.alphas.append(alpha)
        self.betas.append(beta)
        self._tnorm = max(self._tnorm, abs(alpha) + beta + beta_prev)
        if beta <= self.breakdown_tol * self._tnorm:
            self.breakdown = True
            space.release(w)
            return
        space.scale(1.0 / beta, w)
        if self.watch:
            self.watched.append(many_dots(space, w, self.watch))
        if not self.keep_basis and self.q_prev is not None:
            space.release(self.q_prev)
        self.q_prev, self.q = q, w
        if self.basis is not None:
            self.basis.append(w)

    def _fused_step(self, fused: Callable[..., dict], j: int) -> None:
        """The same iteration as :meth:`step`, done by the matvec's owner in one call (sharded oracles)."""
        others = (self.locked + self.basis) if self.reorthogonalize else []  # type: ignore[operator]
        beta_prev = self.betas[-1] if self.betas else 0.0
        r = fused(self.q, self.q_prev, beta_prev, others, self._tnorm, self.breakdown_tol, self.watch)
        alpha, beta = float(r["alpha"]), float(r["beta"])
        if not (math.isfinite(alpha) and math.isfinite(beta)):
            raise NumericalError(
                f"matvec output at Lanczos iteration {j} has non-finite entries (NaN or inf); the matvec "
                "must return finite values."
            )
        if self.reorthogonalize and self.locked:
            self.coupling.append(float(r["coeffs"][len(self.locked) - 1]))
        self.alphas.append(alpha)
        self.betas.append(beta)
        self._tnorm = max(self._tnorm, abs(alpha) + beta + beta_prev)
        if r["breakdown"]:
            self.breakdown = True
            return
        w = r["next"]
        if self.watch:
            self.watched.append([float(x) for x in r["watch"]])
        if not self.keep_basis and self.q_prev is not None:
            self.space.release(self.q_prev)
        self.q_prev, self.q = self.q, w
        if self.basis is not None:
            self.basis.append(w)

    def release(self, keep_basis: bool = False) -> None:
        """Free the process' vectors (all of them, or all but the basis)."""
        alive = [] if self.basis is None else self.basis
        extra = [v for v in (self.q, self.q_prev) if v is not None and all(v is not b for b in alive)]
        release_all(self.space, extra)
        if not keep_basis and self.basis is not None:
            release_all(self.space, self.basis)
            self.basis = None
        self.q = self.q_prev = None


def lanczos(
    matvec: Matvec,
    v0: Vector,
    k: int,
    *,
    space: VectorSpace | None = None,
    reorthogonalize: bool = True,
    store_basis: bool = True,
    tol: float = DEFAULT_BREAKDOWN_TOL,
) -> LanczosResult:
    """Run k Lanczos iterations (fewer on breakdown) from v0.

    Args:
        matvec: v -> H v for a symmetric H; deterministic, returns a new vector.
        v0: nonzero start vector (not modified).
        k: number of iterations (matvecs), >= 1.
        space: vector space of v0; None means :class:`~dist_unlearn.linalg.TensorSpace`.
        reorthogonalize: full reorthogonalisation (needs the basis in memory: O(k) vectors).
        store_basis: return the basis q_1..q_k (O(k) vectors). With both flags False memory is O(1) vectors
            and ``Q y`` is recovered by :func:`lanczos_combine`.
        tol: breakdown threshold, relative to the running estimate of ||T||.

    Returns:
        LanczosResult with alphas (k), betas (k; betas[-1] couples to q_{k+1}), basis or None, breakdown.
    """
    start = time.perf_counter()
    space = resolve_space(space)
    k = check_positive("k", k, integer=True)
    tol = check_positive("tol", tol)
    mv = TimedMatvec(matvec)
    proc = LanczosProcess(
        mv, v0, space, reorthogonalize=reorthogonalize, keep_basis=store_basis, breakdown_tol=tol
    )
    while proc.iterations < k and not proc.breakdown:
        proc.step()
    basis = proc.krylov_basis if (store_basis and proc.basis is not None) else None
    if basis is not None:
        proc.basis = basis  # q_{k+1} is now an extra vector, freed by release()
    proc.release(keep_basis=basis is not None)
    msg = "breakdown: invariant subspace found" if proc.breakdown else f"{k} iterations done"
    return LanczosResult(
        alphas=list(proc.alphas),
        betas=list(proc.betas),
        basis=basis,
        breakdown=proc.breakdown,
        iterations=proc.iterations,
        hvps=mv.calls,
        matvec_time=mv.time,
        solver_time=time.perf_counter() - start,
        message=msg,
    )


def lanczos_combine(
    matvec: Matvec,
    v0: Vector,
    alphas: Sequence[float],
    betas: Sequence[float],
    coeffs: Sequence[float],
    *,
    space: VectorSpace | None = None,
) -> Vector:
    """Second Lanczos pass: regenerate q_1..q_m from the stored scalars and return ``sum_i coeffs[i] q_i``.

    Uses m - 1 matvecs (m = len(coeffs) <= len(alphas)) and O(1) vectors. The recurrence
    ``q_{j+1} = (H q_j - alpha_j q_j - beta_{j-1} q_{j-1}) / beta_j`` is evaluated with exactly the operations
    of the first pass (without reorthogonalisation), so a deterministic matvec reproduces the same basis.

    Args:
        matvec: the matvec of the first pass.
        v0: the start vector of the first pass.
        alphas, betas: the first pass' scalars (``LanczosResult.alphas`` / ``.betas``).
        coeffs: y, the coordinates of the wanted vector in the basis.
        space: vector space; None means TensorSpace.

    Returns:
        A new vector Q_m y.
    """
    space = resolve_space(space)
    m = len(coeffs)
    if m == 0 or m > len(alphas) or len(betas) < m - 1:
        raise ConfigError(
            f"lanczos_combine got {m} coefficients for {len(alphas)} alphas and {len(betas)} betas; "
            "need 1 <= len(coeffs) <= len(alphas) and len(betas) >= len(coeffs) - 1."
        )
    if any(b <= 0 for b in betas[: m - 1]):
        raise NumericalError(
            "lanczos_combine: a beta used to rebuild the basis is <= 0 (breakdown inside it)."
        )
    norm = vector_norm(space, v0, "v0")
    q = combine(space, [1.0 / norm], [v0])
    out = combine(space, [coeffs[0]], [q])
    q_prev = None
    for j in range(m - 1):
        w = matvec(q)
        if w is q:
            w = space.copy(w)
        if q_prev is None:
            w = subtract(space, w, [alphas[j]], [q])
        else:
            w = subtract(space, w, [alphas[j], betas[j - 1]], [q, q_prev])
        space.scale(1.0 / betas[j], w)
        space.axpy(float(coeffs[j + 1]), w, out)
        if q_prev is not None:
            space.release(q_prev)
        q_prev, q = q, w
    release_all(space, [q_prev, q])
    return out
