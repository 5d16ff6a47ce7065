r"""The audit's per-subject verdict over several tests, and the job's status from it.

A *test* is a membership attack (:mod:`dist_unlearn.eval.attacks`: LOSS, zlib, Min-K%, Min-K%++ for causal
LMs; loss, confidence, entropy for classifiers) or the extraction test (:mod:`dist_unlearn.eval.extraction`,
statistic ``1 - ROUGE-L recall``), each a loss-like number per row (lower = more member-like). Each test
places each subject among the audit's unseen rows with :func:`dist_unlearn.eval.subjects.subject_scores`
(its mean quantile ``q_S`` and central band ``0.5 +- h_S``, the design effect estimated from the unseen
subjects). For small samples of independent rows the band comes from the exact rank law instead of the
normal approximation (:func:`refined_halfwidth`, :mod:`dist_unlearn.eval.rank_null`): a subject of one row
can then be flagged once the holdout has ``2 / alpha - 1`` rows, which the normal band never allows.

**Several tests, one false-alarm rate per subject.** With m tests, a subject the model never saw would be
flagged by *some* test far more often than one test's alpha. Every band is therefore built at ``alpha / m``
(Bonferroni over the tests), so that

    P(a subject is flagged by any test | the model never saw it) <= alpha   (default 0.05),

the false-alarm rate the stop rule's single loss test has per subject. The tests are correlated (LOSS and
zlib share the loss), so the bound is conservative; the price is a band wider than a single test's, which
the audit records subject by subject. A request of S never-seen subjects gets some flag with probability at
most ``S alpha`` (recorded as ``request_false_alarm_bound``). ``family="request"`` (``audit.family``) splits
alpha over the subjects as well, bounding the whole request's false alarms by alpha; it is not the default
because rows of one person move together (design effects of 2 or more), and at ``alpha / (S m)`` a subject
of six rows can then hardly be flagged with any holdout, however clearly it is memorised.

**Status of a subject.** ``recognisable`` when some test places it below its band (still fitted better than
unseen data), ``conspicuous`` when some test places it above (pushed past unseen data: itself a tell; when
tests disagree, the one furthest outside its band in units of ``h_S`` decides, both are recorded),
``forgotten`` when every test places it inside, and ``undecided`` when no test could flag it whatever its
rows' losses (its band covers [0, 1]: too few rows per subject or too few unseen rows at this
false-alarm rate; the record says how many unseen rows would do).

**The request as a whole.** Subjects can each sit inside their band while all lean the same way (every
one slightly recognisable); the rows of all subjects pooled into one group are judged the same way (same
tests, same alpha, the design effect of one subject's rows applied to the pool), with a band far narrower
than one subject's.

**Status of the job.** ``forgotten`` only when every subject is (and the pool is inside its band);
``not_forgotten`` when some subject is flagged and none is forgotten, ``partially_forgotten`` when some are
flagged and others forgotten (or only the pool is flagged; the record names them); ``undecided`` when none
is flagged but some cannot be judged.

The criterion asks whether each subject looks like a subject the model never saw. Removing a whole class or
capability is a different goal (a model retrained without a class still tells that class apart from unseen
data of the other classes); it is judged against retraining in the experiments
(``dist-unlearn run``), not by this audit.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dist_unlearn.errors import ConfigError
from dist_unlearn.eval.rank_null import exact_halfwidth
from dist_unlearn.eval.subjects import (
    SubjectBand,
    SubjectScore,
    design_effect,
    halfwidth,
    subject_scores,
    unseen_quantiles,
)

AUDIT_STATUSES = ("forgotten", "recognisable", "conspicuous", "undecided")
JOB_STATUSES = ("forgotten", "partially_forgotten", "not_forgotten", "undecided")
TEST_TITLES = {
    "loss": "LOSS",
    "zlib": "zlib",
    "min_k": "Min-K%",
    "min_k_plus_plus": "Min-K%++",
    "confidence": "confidence",
    "entropy": "entropy",
    "extraction": "extraction (ROUGE-L)",
}


@dataclass(frozen=True)
class AuditSettings:
    """The numbers the per-subject verdict is decided by (recorded with it).

    Attributes:
        alpha: the chance that a subject the model never saw is flagged by any of the tests (``family``
            "subject"), or that a request whose subjects the model never saw gets any flag ("request":
            alpha is split over the subjects as well; wider bands).
        family: "subject" (default) or "request", see ``alpha``.
        min_halfwidth: no band is narrower than this on the quantile scale.
        min_unseen_subjects: the design effect is estimated from the unseen subjects only when there are
            at least this many.
    """

    alpha: float = 0.05
    family: str = "subject"
    min_halfwidth: float = 0.1
    min_unseen_subjects: int = 5

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"audit alpha={self.alpha!r} must be in (0, 1).")
        if self.family not in ("subject", "request"):
            raise ConfigError(f"audit family={self.family!r} must be 'subject' or 'request'.")

    def band(self, n_tests: int, n_subjects: int = 1) -> SubjectBand:
        """The band of one test: alpha split over the tests, and over the subjects for the "request"
        family (Bonferroni)."""
        split = max(1, n_tests) * (max(1, n_subjects) if self.family == "request" else 1)
        return SubjectBand(
            alpha=self.alpha / split,
            min_halfwidth=self.min_halfwidth,
            min_unseen_subjects=self.min_unseen_subjects,
        )


def refined_halfwidth(n_rows: int, n_unseen: int, band: SubjectBand, inflation: float) -> float:
    """The band's half width: :func:`~dist_unlearn.eval.subjects.halfwidth` (normal approximation with the
    design effect), replaced by the exact rank law (:func:`~dist_unlearn.eval.rank_null.exact_halfwidth`)
    where rows are independent (design effect 1) and the sample is small, and never narrower than the
    exact law when rows are not independent."""
    normal = halfwidth(n_rows, n_unseen, band, inflation)
    exact = exact_halfwidth(n_rows, n_unseen, band.alpha)
    if exact is None:
        return normal
    exact = max(band.min_halfwidth, exact) if exact < 0.5 else 0.5
    return exact if inflation <= 1.0 else max(normal, exact)


def decidable(n_rows: int, n_unseen: int, band: SubjectBand, inflation: float) -> bool:
    """Whether a subject of ``n_rows`` rows can be flagged at all with ``n_unseen`` unseen rows: the most
    extreme arrangement is rarer than alpha (``2 / C(n_rows + n_unseen, n_rows) <= alpha``) and, with a
    design effect, the normal band is narrower than [0, 1]."""
    if 2.0 / math.comb(n_rows + n_unseen, n_rows) > band.alpha:
        return False
    return inflation <= 1.0 or halfwidth(n_rows, n_unseen, band, inflation) < 0.5


def rows_needed(n_rows: int, band: SubjectBand, inflation: float, limit: int = 1_000_000) -> int | None:
    """The fewest unseen rows with which a subject of ``n_rows`` rows can be flagged (:func:`decidable`);
    None when no holdout size suffices (too few rows per subject at this false-alarm rate)."""
    if not decidable(n_rows, limit, band, inflation):
        return None
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi) // 2
        if decidable(n_rows, mid, band, inflation):
            hi = mid
        else:
            lo = mid + 1
    return lo


def refine(score: SubjectScore, n_unseen: int, band: SubjectBand, inflation: float) -> SubjectScore:
    """``score`` with the :func:`refined_halfwidth` band and the status it gives."""
    h = refined_halfwidth(score.n_rows, n_unseen, band, inflation)
    d = score.quantile - 0.5
    score.halfwidth = h
    score.status = "forgotten" if abs(d) <= h else ("recognisable" if d < 0 else "conspicuous")
    return score


def _combine(per_test: dict[str, SubjectScore]) -> tuple[str, dict[str, str]]:
    flags = {t: s.status for t, s in per_test.items() if s.status != "forgotten"}
    if flags:
        worst = max(flags, key=lambda t: abs(per_test[t].quantile - 0.5) / max(per_test[t].halfwidth, 1e-12))
        return flags[worst], flags
    if all(s.halfwidth >= 0.5 for s in per_test.values()):
        return "undecided", {}
    return "forgotten", {}


def _subject_record(subj: Any, per_test: dict[str, SubjectScore]) -> dict[str, Any]:
    status, flags = _combine(per_test)
    first = next(iter(per_test.values()))
    return {
        "subject": _plain(subj),
        "n_rows": first.n_rows,
        "status": status,
        "flagged_by": flags,
        "quantile": first.quantile,
        "band": list(first.band),
        "tests": {
            t: {k: v for k, v in s.to_dict().items() if k not in ("subject", "n_rows")}
            for t, s in per_test.items()
        },
    }


def _edge_rows(q: float, n_unseen: int) -> float:
    return round(q * n_unseen, 1)


def unseen_reference(
    unseen: Sequence[float] | np.ndarray, unseen_subjects: Sequence[Hashable] | None
) -> list[dict[str, Any]]:
    """Each unseen subject's mean quantile among the *other* unseen subjects' rows: where subjects the model
    never saw fall (the spread the band is calibrated on; drawn in the audit's plot)."""
    if unseen_subjects is None:
        return []
    u = np.asarray(unseen, dtype=np.float64)
    groups: dict[Hashable, list[int]] = {}
    for i, s in enumerate(unseen_subjects):
        groups.setdefault(s, []).append(i)
    if len(groups) < 2:
        return []
    out = []
    for s, rows in groups.items():
        others = np.delete(u, rows)
        out.append(
            {
                "subject": _plain(s),
                "n_rows": len(rows),
                "quantile": float(unseen_quantiles(u[rows], others).mean()),
            }
        )
    return out


def judge_subjects(
    tests: Mapping[str, tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]],
    forget_subjects: Sequence[Hashable],
    unseen_subjects: Sequence[Hashable] | None,
    settings: AuditSettings | None = None,
    design: Mapping[str, tuple[Sequence[float] | np.ndarray, Sequence[Hashable]]] | None = None,
) -> dict[str, Any]:
    """The per-subject verdict of the module docstring.

    Args:
        tests: test name -> (forget rows' statistics, unseen rows' statistics), loss-like; the first test is
            the primary one (its quantile heads the tables and the plot).
        forget_subjects: the subject of each forget row.
        unseen_subjects: the subject of each unseen row (None: rows independent, no design effect).
        settings: alpha and the band's floor.
        design: test -> (statistics, subjects) of every never-seen row available to estimate the design
            effect from (e.g. the unseen rows plus the stop rule's calibration rows: more unseen subjects, a
            steadier estimate); None: the unseen rows alone. The reference distribution stays ``tests``'.

    Returns:
        ``{"status", "sentence", "subjects": [...], "failing", "undecided", "counts", "settings",
        "per_test_alpha", "tests", "inflation", "n_unseen", "unseen_subjects", "resolution",
        "unseen_reference"}``; each subject: ``subject``, ``n_rows``, ``status``, ``flagged_by``
        (test -> status), ``quantile`` and ``band`` of the primary test, and ``tests`` (test -> quantile,
        halfwidth, band, status, row_quantiles).
    """
    settings = settings or AuditSettings()
    names = list(tests)
    order = list(dict.fromkeys(forget_subjects))
    band = settings.band(len(names), len(order))
    scores: dict[str, dict[Any, SubjectScore]] = {}
    inflation: dict[str, float] = {}
    n_unseen = 0
    for name in names:
        forget, unseen = tests[name]
        n_unseen = len(unseen)
        pool = design[name] if design is not None else (unseen, unseen_subjects)
        inflation[name] = design_effect(pool[0], pool[1], band)[0]
        found = subject_scores(forget, forget_subjects, unseen, unseen_subjects=unseen_subjects, band=band)
        scores[name] = {s.subject: refine(s, len(unseen), band, inflation[name]) for s in found}
    subjects = []
    for subj in order:
        record = _subject_record(subj, {t: scores[t][subj] for t in names})
        if record["status"] == "undecided":
            need = [rows_needed(record["n_rows"], band, inflation[t]) for t in names]
            record["unseen_rows_needed"] = min((n for n in need if n is not None), default=None)
        subjects.append(record)
    pooled = None
    if len(order) > 1:
        everyone = ["(all subjects)"] * len(forget_subjects)
        pooled = _subject_record(
            everyone[0],
            {
                t: refine(
                    subject_scores(
                        tests[t][0], everyone, tests[t][1], unseen_subjects=unseen_subjects, band=band
                    )[0],
                    len(tests[t][1]),
                    band,
                    inflation[t],
                )
                for t in names
            },
        )
    n_groups = len(set(unseen_subjects)) if unseen_subjects is not None else 0
    first = names[0]
    design_subjects = (
        len(set(design[first][1])) if design is not None and design[first][1] is not None else n_groups
    )
    out = {
        "settings": asdict(settings),
        "per_test_alpha": band.alpha,
        "request_false_alarm_bound": (
            settings.alpha if settings.family == "request" else min(1.0, settings.alpha * len(order))
        ),
        "tests": names,
        "inflation": inflation,
        "n_unseen": n_unseen,
        "unseen_subjects": n_groups,
        "design_subjects": design_subjects,
        "subjects": subjects,
        "pooled": pooled,
        "counts": {s: sum(r["status"] == s for r in subjects) for s in AUDIT_STATUSES},
        "failing": [r["subject"] for r in subjects if r["status"] in ("recognisable", "conspicuous")],
        "undecided": [r["subject"] for r in subjects if r["status"] == "undecided"],
        "unseen_reference": {t: unseen_reference(tests[t][1], unseen_subjects) for t in names},
    }
    out["resolution"] = resolution(out)
    out["status"], out["sentence"] = job_status(out)
    return out


def resolution(record: dict[str, Any]) -> dict[str, Any]:
    """What the holdout allows: the quantile step, the narrowest and widest band in unseen rows, and the
    unseen rows the undecided subjects would need."""
    n_u = record["n_unseen"]
    halves = [r["tests"][record["tests"][0]]["halfwidth"] for r in record["subjects"]]
    h_min, h_max = min(halves), max(halves)
    need = [r.get("unseen_rows_needed") for r in record["subjects"] if r["status"] == "undecided"]
    sentence = (
        f"{n_u} unseen rows (quantile step {1 / n_u:.3f}); per-test false-alarm rate "
        f"{record['per_test_alpha']:.2g} ({record['settings']['alpha']:g} {_per(record)} over "
        f"{len(record['tests'])} tests)."
    )
    judged = [h for h in halves if h < 0.5]
    if judged:
        lo, hi = min(judged), max(judged)
        sentence += (
            f" A subject is flagged when its mean quantile leaves 0.5 +- h, h from {lo:.3f} to {hi:.3f}: "
            f"below the {_edge_rows(0.5 - hi, n_u):g}th-{_edge_rows(0.5 - lo, n_u):g}th lowest of the {n_u} "
            "unseen rows, or above the mirror edge."
        )
    else:
        sentence += " No subject can be flagged with this holdout."
    if need:
        known = [n for n in need if n is not None]
        if known:
            sentence += (
                f" {len(need)} subject(s) cannot be judged with this holdout: give at least {max(known)} "
                "unseen rows (data the model never saw, in the holdout), or group rows into subjects "
                "(data.subject_column)."
            )
        if len(known) < len(need):
            sentence += (
                " Some subjects have too few rows to be judged at this false-alarm rate with any holdout: "
                "group rows into subjects (data.subject_column) or raise audit.alpha."
            )
    return {"n_unseen": n_u, "halfwidth_min": h_min, "halfwidth_max": h_max, "sentence": sentence}


def _describe(r: dict[str, Any]) -> str:
    parts = []
    for t in r["flagged_by"]:
        if t == "verbatim":  # dist_unlearn.eval.verbatim: rows said word for word, not a quantile
            v = r["verbatim"]
            parts.append(f"{v['count']} of {v['of']} rows answered word for word, p={v['p_value']:.3g}")
            continue
        s = r["tests"][t]
        parts.append(
            f"{TEST_TITLES.get(t, t)} q={s['quantile']:.2f} outside [{s['band'][0]:.2f}, {s['band'][1]:.2f}]"
        )
    return f"{r['subject']} ({r['status']}: {'; '.join(parts)})"


def job_status(record: dict[str, Any]) -> tuple[str, str]:
    """The job's status and sentence from the per-subject record (module docstring)."""
    subs = record["subjects"]
    n = len(subs)
    failing = [r for r in subs if r["status"] in ("recognisable", "conspicuous")]
    forgotten = [r for r in subs if r["status"] == "forgotten"]
    if failing:
        status = "partially_forgotten" if forgotten else "not_forgotten"
        sentence = (
            f"{len(failing)} of {n} subjects can still be told apart from data never seen: "
            + ", ".join(_describe(r) for r in failing)
            + f"; {len(forgotten)} forgotten."
        )
        return status, sentence
    pooled = record.get("pooled")
    if pooled is not None and pooled["status"] in ("recognisable", "conspicuous"):
        return "partially_forgotten" if forgotten else "not_forgotten", (
            f"No single subject of the {n} is flagged, but their rows together are still told apart from "
            f"data never seen: {_describe(pooled)}."
        )
    undecided = [r for r in subs if r["status"] == "undecided"]
    if undecided:
        return "undecided", (
            f"No subject is flagged, but {len(undecided)} of {n} cannot be judged with this holdout. "
            + record["resolution"]["sentence"]
        )
    return "forgotten", (
        f"Every one of the {n} subjects looks like data never seen under all {len(record['tests'])} tests "
        f"(false-alarm rate {record['settings']['alpha']:g} {_per(record)})."
    )


def _per(record: dict[str, Any]) -> str:
    return "for the whole request" if record["settings"].get("family") == "request" else "per subject"


def _plain(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else x
