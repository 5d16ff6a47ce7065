"""Independent dense float64 references and an opaque vector space for the solver tests (helpers, no tests).

The cubic subproblem min g.d + 1/2 d.Hd + (M/6)|d|^3 is solved from the full eigendecomposition of H:
lambda is the root of |s(lambda)| = 2 lambda / M on (max(0, -lambda_1), inf) found by scipy's brentq, with
s(lambda) = -(H + lambda I)^{-1} g; the hard case (g orthogonal to the leftmost eigenspace and the root
missing) is built explicitly as s_hc + tau u_1.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import brentq

from dist_unlearn.linalg import TensorSpace

_EIG_CACHE: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def eigh(H: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense eigendecomposition, remembered per matrix object (big references are computed once)."""
    key = id(H)
    if key not in _EIG_CACHE or _EIG_CACHE[key][0] is not H:
        _EIG_CACHE.clear()
        _EIG_CACHE[key] = (H, *np.linalg.eigh(H))
    return _EIG_CACHE[key][1], _EIG_CACHE[key][2]


def dense_cubic(H: np.ndarray, g: np.ndarray, M: float) -> tuple[np.ndarray, float, bool]:
    """Return (d, lambda, hard_case) for the global minimiser."""
    w, V = eigh(H)
    c = V.T @ g
    sigma = M / 2
    lam_l = max(0.0, -w[0])
    scale = max(1.0, np.abs(w).max())
    left = np.abs(w - w[0]) <= 1e-9 * scale
    if lam_l > 0 and np.linalg.norm(c[left]) <= 1e-10 * max(np.linalg.norm(c), 1e-300):
        z = np.zeros_like(c)
        z[~left] = -c[~left] / (w[~left] + lam_l)
        if np.linalg.norm(z) <= lam_l / sigma:
            z[np.flatnonzero(left)[0]] = np.sqrt((lam_l / sigma) ** 2 - z @ z)
            return V @ z, lam_l, True

    def f(lam: float) -> float:
        return np.linalg.norm(c / (w + lam)) - lam / sigma

    lo = lam_l
    step = max(1e-300, 1e-12 * max(lam_l, 1e-12))
    while f(lo + step) < 0 and step > 1e-300:  # the root can sit extremely close to the pole
        step *= 0.5
        if step < 1e-280:
            break
    lo = lo + step
    hi = lam_l + 1.0
    while f(hi) > 0:
        hi = lam_l + 2 * (hi - lam_l)
    lam = brentq(f, lo, hi, xtol=1e-300, rtol=1e-15, maxiter=1000)
    return V @ (-c / (w + lam)), lam, False


def model(H: np.ndarray, g: np.ndarray, M: float, d: np.ndarray) -> float:
    return float(g @ d + 0.5 * d @ H @ d + M / 6 * np.linalg.norm(d) ** 3)


def random_problem(kind: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A symmetric H (random eigenvectors) and g for one of the test families."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    if kind == "pd":
        ev = rng.uniform(0.1, 10.0, n)
    elif kind == "indefinite":
        ev = rng.uniform(-2.0, 10.0, n)
    elif kind == "singular":
        ev = rng.uniform(0.5, 5.0, n)
        ev[: max(1, n // 3)] = 0.0
    elif kind == "negative_definite":
        ev = -rng.uniform(0.1, 3.0, n)
    elif kind == "spiked":  # few large positive, a bulk near zero, a few small negative
        ev = rng.normal(0.0, 1e-3, n)
        ev[:3] = rng.uniform(50.0, 200.0, 3)
        ev[3 : 3 + max(1, n // 10)] = -rng.uniform(1e-3, 5e-2, max(1, n // 10))
    elif kind == "hard":
        ev = rng.uniform(0.0, 10.0, n)
        ev[0] = -1.5
    else:
        raise ValueError(kind)
    H = (Q * ev) @ Q.T
    H = 0.5 * (H + H.T)
    g = rng.standard_normal(n)
    if kind == "hard":
        u = Q[:, 0]
        g -= (g @ u) * u
        g -= (g @ u) * u
        g *= 0.05 / np.linalg.norm(g)
    return H, g


def exact_hard_case(n: int, seed: int, mult: int, rest: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """A true hard case: H with leftmost eigenvalue -3 (multiplicity ``mult``), the rest uniform in ``rest``,
    random eigenvectors; g exactly orthogonal (to rounding) to the leftmost eigenspace."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    ev = np.sort(rng.uniform(rest[0], rest[1], n))
    ev[:mult] = -3.0
    H = (Q * ev) @ Q.T
    g = 0.01 * rng.standard_normal(n)
    for _ in range(2):
        g = g - Q[:, :mult] @ (Q[:, :mult].T @ g)
    return 0.5 * (H + H.T), g


def torch_matvec(H: np.ndarray):
    Ht = torch.from_numpy(H)
    return lambda v: Ht @ v


class OpaqueSpace:
    """A VectorSpace whose vectors are opaque handles (like remote shards): indexing them is impossible.

    Counts operations and live vectors, and fails on use after release or double release, so tests can check
    that a solver only speaks the protocol, frees what it allocates and keeps O(1) vectors when asked to.
    """

    class Handle:
        __slots__ = ("_t", "alive", "__weakref__")

        def __init__(self, t: torch.Tensor) -> None:
            self._t = t
            self.alive = True

    def __init__(self, with_lincomb: bool = True) -> None:
        self._inner = TensorSpace()
        self.ops = 0
        self.live = 0
        self.max_live = 0
        if with_lincomb:
            self.lincomb = self._lincomb

    def wrap(self, t: torch.Tensor) -> OpaqueSpace.Handle:
        self.live += 1
        self.max_live = max(self.max_live, self.live)
        return OpaqueSpace.Handle(t)

    def unwrap(self, h: OpaqueSpace.Handle) -> torch.Tensor:
        if not isinstance(h, OpaqueSpace.Handle):
            raise TypeError(f"not a handle: {type(h).__name__}")
        if not h.alive:
            raise RuntimeError("use of a released vector")
        return h._t

    def matvec(self, H: np.ndarray):
        Ht = torch.from_numpy(H)
        return lambda h: self.wrap(Ht @ self.unwrap(h))

    def dot(self, x, y):
        self.ops += 1
        return self._inner.dot(self.unwrap(x), self.unwrap(y))

    def norm(self, x):
        self.ops += 1
        return self._inner.norm(self.unwrap(x))

    def axpy(self, a, x, y):
        self.ops += 1
        self._inner.axpy(a, self.unwrap(x), self.unwrap(y))
        return y

    def scale(self, a, x):
        self.ops += 1
        self._inner.scale(a, self.unwrap(x))
        return x

    def copy(self, x):
        self.ops += 1
        return self.wrap(self.unwrap(x).clone())

    def zeros_like(self, x):
        self.ops += 1
        return self.wrap(torch.zeros_like(self.unwrap(x)))

    def is_finite(self, x):
        self.ops += 1
        return self._inner.is_finite(self.unwrap(x))

    def release(self, x):
        if not x.alive:
            raise RuntimeError("double release")
        x.alive = False
        self.live -= 1

    def random_like(self, x, seed, kind="normal"):
        gen = torch.Generator().manual_seed(seed)
        return self.wrap(torch.randn(self.unwrap(x).shape, generator=gen, dtype=torch.float64))

    def _lincomb(self, coeffs, vectors):
        self.ops += 1
        out = torch.zeros_like(self.unwrap(vectors[0]))
        for c, v in zip(coeffs, vectors, strict=True):
            out.add_(self.unwrap(v), alpha=c)
        return self.wrap(out)
