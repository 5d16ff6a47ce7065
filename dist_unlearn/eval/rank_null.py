r"""The exact null distribution of a subject's quantile among unseen rows, for small samples.

When a subject's ``m`` rows and the ``n`` unseen rows are exchangeable (no design effect) and untied, the
subject's mean quantile is ``q = U / (m n)`` with ``U`` the Mann-Whitney count of (unseen row, subject row)
pairs ordered one way. Every one of the ``C(m+n, m)`` interleavings is equally likely, so the number of
them with ``U = u`` is the coefficient of ``x^u`` in the Gaussian binomial coefficient

    [m+n choose m]_x = prod_{i=1}^{m} (1 - x^{n+i}) / (1 - x^i),

computed here with exact integers. The normal approximation of :func:`dist_unlearn.eval.subjects.halfwidth`
is poor for few rows: a single row among ``n`` unseen rows has ``P(q = 0) = 1/(n+1)``, which the normal band
can never reach at small alpha, so a subject of one row could never be flagged whatever the holdout; with
the exact law it can once ``n + 1 >= 2 / alpha``. :func:`exact_halfwidth` gives the smallest ``h`` with
``P(|q - 1/2| > h) <= alpha``.
"""

from __future__ import annotations

from functools import lru_cache

MAX_PAIRS = 20_000
"""Exact laws are computed up to ``m n`` of this size (beyond it the normal approximation is accurate)."""


@lru_cache(maxsize=256)
def mann_whitney_counts(m: int, n: int) -> tuple[int, ...]:
    """Number of interleavings of ``m`` and ``n`` untied values with ``U = 0 .. m n`` (exact integers)."""
    poly = [1]
    for i in range(1, m + 1):
        k = n + i
        grown = poly + [0] * k
        for j, c in enumerate(poly):  # times (1 - x^(n+i))
            grown[j + k] -= c
        for j in range(i, len(grown)):  # divided by (1 - x^i)
            grown[j] += grown[j - i]
        poly = grown[: i * n + 1]
    return tuple(poly)


def exact_halfwidth(m: int, n: int, alpha: float) -> float | None:
    """The smallest ``h`` with ``P(|U/(m n) - 1/2| > h) <= alpha`` under the null (one of the attainable
    deviations); 0.5 when even the most extreme arrangement is more likely than ``alpha`` (the subject
    cannot be flagged); None when ``m n`` exceeds :data:`MAX_PAIRS`."""
    if m * n > MAX_PAIRS:
        return None
    counts = mann_whitney_counts(m, n)
    total = sum(counts)
    mn = m * n
    mass: dict[float, int] = {}
    for u, c in enumerate(counts):
        d = abs(u - mn / 2.0) / mn
        mass[d] = mass.get(d, 0) + c
    devs = sorted(mass, reverse=True)
    tail = 0
    for k, d in enumerate(devs):  # tail = P(|q - 1/2| >= d), growing inwards
        tail += mass[d]
        if tail * 1.0 / total > alpha:
            return 0.5 if k == 0 else float(d)
    return 0.0
