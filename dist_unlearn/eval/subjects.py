r"""Per-subject membership evidence: where each subject's forget rows fall among data never seen.

A deletion request names *subjects* (people, authors, documents); each must look like data the model never
saw. An aggregate over the whole forget set can hide two opposite failures (one subject still fitted, another
pushed far past unseen data, which is itself a membership signal), so the criterion is per subject.

**Score.** For an attack score s (higher = "more likely a member"; for the loss attack s = -loss) and the
empirical distribution of the unseen rows' scores, a subject S with rows i in S gets

    q_S = 1/|S| sum_{i in S} F_u(l_i),   F_u(x) = P(l_u < x) + 1/2 P(l_u = x)

on the loss scale (``F_u`` the mid-rank empirical CDF of the unseen losses), i.e. the mean quantile of the
subject's rows among unseen rows, and ``q_S = 1 - AUC_S`` with ``AUC_S`` the loss-attack AUC of S's rows
against the unseen rows. q_S near 0: the rows are fitted better than unseen data (still *recognisable*);
near 1: fitted worse than nearly every unseen row (*conspicuous*); a subject the model never saw sits near
0.5.

**Band.** For rows exchangeable with the unseen rows (the null hypothesis "never seen"), ``AUC_S`` is a
Mann-Whitney statistic with mean 1/2 and variance (n_S + n_u + 1) / (12 n_S n_u) (no ties). Rows of one
subject are not independent (one person's records share a name, a rare word), which widens the spread; the
design effect ``inflation`` >= 1 accounts for it, estimated from the unseen subjects themselves (each scored
against the other unseen subjects' rows) when there are enough of them. The band is

    |q_S - 1/2| <= h_S = max(min_halfwidth, z_{1 - alpha/2} sqrt(inflation (n_S + n_u + 1) / (12 n_S n_u)))

capped at 1/2: a subject the model never saw falls outside it with probability about ``alpha``. The band is
wide for a subject with few rows: that is the resolution the data allows, and it is recorded.

Removing a whole class or capability is a different goal (the retrained model itself tells such a set apart
from unseen data); it is judged against a retrained model in the experiments, not by this criterion.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from dist_unlearn.errors import ConfigError, DataError

SUBJECT_STATUSES = ("forgotten", "recognisable", "conspicuous")


@dataclass(frozen=True)
class SubjectBand:
    """How wide the central band is (recorded with every per-subject verdict).

    Attributes:
        alpha: two-sided probability that a subject the model never saw falls outside the band (per subject,
            per attack).
        min_halfwidth: the band is never narrower than this on the quantile scale.
        min_unseen_subjects: the design effect is estimated from the unseen subjects only when there are
            at least this many (else 1: rows treated as independent).
    """

    alpha: float = 0.05
    min_halfwidth: float = 0.1
    min_unseen_subjects: int = 5

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"SubjectBand.alpha={self.alpha!r} must be in (0, 1).")
        if not 0.0 <= self.min_halfwidth < 0.5:
            raise ConfigError(f"SubjectBand.min_halfwidth={self.min_halfwidth!r} must be in [0, 0.5).")


@dataclass
class SubjectScore:
    """One subject's position among unseen rows under one attack.

    Attributes:
        subject: the subject's value in the subject column.
        n_rows: its forget rows.
        quantile: q_S, the mean quantile of its rows among the unseen rows (0.5 = like unseen data).
        halfwidth: h_S, the band's half width for this subject.
        status: ``forgotten`` (|q_S - 0.5| <= h_S), ``recognisable`` (below: fitted better than unseen data)
            or ``conspicuous`` (above: fitted worse than unseen data).
        row_quantiles: F_u of each of its rows, in the order given.
    """

    subject: Any
    n_rows: int
    quantile: float
    halfwidth: float
    status: str
    row_quantiles: list[float] = field(default_factory=list)

    @property
    def band(self) -> tuple[float, float]:
        return 0.5 - self.halfwidth, 0.5 + self.halfwidth

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["band"] = list(self.band)
        return d


def unseen_quantiles(
    values: Sequence[float] | np.ndarray, unseen: Sequence[float] | np.ndarray
) -> np.ndarray:
    """F_u(x) = P(u < x) + 1/2 P(u = x) for each x in ``values`` (mid-rank empirical CDF of ``unseen``)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    u = np.sort(np.asarray(unseen, dtype=np.float64).reshape(-1))
    if u.size == 0:
        raise DataError("per-subject evidence needs at least one unseen row.")
    below = np.searchsorted(u, x, side="left")
    at_or_below = np.searchsorted(u, x, side="right")
    return (below + 0.5 * (at_or_below - below)) / u.size


def null_variance(n_rows: int, n_unseen: int) -> float:
    """Variance of a subject's quantile q_S when its rows are exchangeable with the unseen rows."""
    return (n_rows + n_unseen + 1) / (12.0 * n_rows * n_unseen)


def halfwidth(n_rows: int, n_unseen: int, band: SubjectBand, inflation: float = 1.0) -> float:
    """h_S of the module docstring."""
    from scipy.stats import norm

    z = float(norm.ppf(1.0 - band.alpha / 2.0))
    h = z * math.sqrt(max(inflation, 1.0) * null_variance(n_rows, n_unseen))
    return float(min(0.5, max(band.min_halfwidth, h)))


def _groups(subjects: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    out: dict[Hashable, list[int]] = {}
    for i, s in enumerate(subjects):
        out.setdefault(s, []).append(i)
    return out


def design_effect(
    unseen_losses: Sequence[float] | np.ndarray,
    unseen_subjects: Sequence[Hashable] | None,
    band: SubjectBand,
) -> tuple[float, int]:
    """Inflation of the null variance for rows grouped by subject, from the unseen subjects themselves.

    Each unseen subject is scored against the other unseen subjects' rows (leave that subject out); the
    design effect is the mean of (q - 1/2)^2 / null variance over them, floored at 1.

    Returns:
        ``(inflation, unseen subjects used)``; ``(1.0, k)`` when fewer than ``band.min_unseen_subjects``.
    """
    if unseen_subjects is None:
        return 1.0, 0
    u = np.asarray(unseen_losses, dtype=np.float64).reshape(-1)
    groups = _groups(list(unseen_subjects))
    if len(groups) < max(2, band.min_unseen_subjects):
        return 1.0, len(groups)
    ratios = []
    for rows in groups.values():
        others = np.delete(u, rows)
        q = float(unseen_quantiles(u[rows], others).mean())
        ratios.append((q - 0.5) ** 2 / null_variance(len(rows), others.size))
    return max(1.0, float(np.mean(ratios))), len(groups)


def subject_scores(
    forget_losses: Sequence[float] | np.ndarray,
    subjects: Sequence[Hashable],
    unseen_losses: Sequence[float] | np.ndarray,
    *,
    unseen_subjects: Sequence[Hashable] | None = None,
    band: SubjectBand | None = None,
) -> list[SubjectScore]:
    """Score every subject of the forget set against the unseen rows (module docstring).

    Args:
        forget_losses: one loss per forget row (lower = fitted better); any attack works when given as a
            "loss-like" number (lower = more member-like).
        subjects: the subject of each forget row (same length).
        unseen_losses: one loss per unseen row.
        unseen_subjects: the subject of each unseen row, to estimate the design effect (None: rows
            independent).
        band: the band's settings.

    Returns:
        One :class:`SubjectScore` per subject, in order of first appearance.

    Raises:
        DataError: lengths differ, no rows, or non-finite losses.
    """
    band = band or SubjectBand()
    f = np.asarray(forget_losses, dtype=np.float64).reshape(-1)
    u = np.asarray(unseen_losses, dtype=np.float64).reshape(-1)
    if f.size != len(subjects):
        raise DataError(f"{f.size} forget losses but {len(subjects)} subject values: one per forget row.")
    if unseen_subjects is not None and len(unseen_subjects) != u.size:
        raise DataError(f"{u.size} unseen losses but {len(unseen_subjects)} unseen subject values.")
    if f.size == 0 or u.size == 0:
        raise DataError("per-subject evidence needs at least one forget row and one unseen row.")
    if not (np.all(np.isfinite(f)) and np.all(np.isfinite(u))):
        raise DataError("per-subject evidence got NaN or inf losses.")
    inflation, _ = design_effect(u, unseen_subjects, band)
    rq = unseen_quantiles(f, u)
    out = []
    for subject, rows in _groups(list(subjects)).items():
        q = float(rq[rows].mean())
        h = halfwidth(len(rows), u.size, band, inflation)
        status = "forgotten" if abs(q - 0.5) <= h else ("recognisable" if q < 0.5 else "conspicuous")
        out.append(SubjectScore(subject, len(rows), q, h, status, [float(x) for x in rq[rows]]))
    return out
