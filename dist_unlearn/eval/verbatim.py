r"""Forget rows the model still answers word for word, against how often it does so for people it never saw.

The per-subject tests judge a subject by the *mean* position of its rows among unseen rows, so one row a
model still says verbatim (a locker code, an address) among several forgotten ones can leave the subject
inside its band. This check counts the rows themselves: a forget row is *verbatim* when its greedy answer
begins with the true answer's words (``exact`` of :mod:`dist_unlearn.eval.extraction`). A model that never
saw a person still says some answers verbatim (a common city, a guessable fact), so the reference is the
rate on the audit's unseen rows, not zero.

The forget rows' count k of n is compared with the unseen rows' m of N by the one-sided Fisher exact test
(hypergeometric tail: of the K = k + m verbatim rows among all n + N, at least k fall among the forget rows
if forget and unseen rows were alike):

    p = sum_{x >= k} C(K, x) C(n + N - K, n - x) / C(n + N, n).

The request is flagged when p < alpha (the audit's false-alarm rate); a single subject when its own p is
below alpha divided by the number of subjects (Bonferroni over the subjects). A flagged subject counts as
``recognisable`` (flagged by ``verbatim``). Verbatim rows that are not significant at this holdout's size are
still listed by row position in the record (never their text: the record must not repeat what was to be
forgotten), and the verdict's sentence says how many there are.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def fisher_greater(k: int, n: int, m: int, big_n: int) -> float:
    """One-sided Fisher exact p-value that k verbatim rows of n exceed the rate of m of ``big_n`` (module
    docstring): P(X >= k) for X hypergeometric with K = k + m successes among n + big_n, n drawn."""
    if k <= 0:
        return 1.0
    from scipy.stats import hypergeom  # scipy.stats takes seconds to import: only when a row is verbatim

    return float(hypergeom.sf(k - 1, n + big_n, k + m, n))


def verbatim_record(
    forget_exact: np.ndarray, forget_subjects: list[Any], unseen_exact: np.ndarray, alpha: float
) -> dict[str, Any]:
    """The verbatim check of one measurement.

    Args:
        forget_exact: 1.0 where a forget row's greedy answer is the true answer (``Extraction.exact``).
        forget_subjects: the subject of each forget row.
        unseen_exact: the same for the audit's unseen rows.
        alpha: the false-alarm rate.

    Returns:
        ``{"rows", "count", "of", "unseen_count", "unseen_of", "p_value", "flagged", "subjects",
        "sentence"}``: ``rows`` the positions of the verbatim forget rows, ``subjects`` per subject
        ``{"rows", "count", "of", "p_value", "flagged"}``, ``flagged`` whether the request's count is beyond
        the unseen rate (the subjects carry their own flags).
    """
    exact = np.asarray(forget_exact, dtype=np.float64) >= 1.0
    unseen = np.asarray(unseen_exact, dtype=np.float64) >= 1.0
    n, big_n, m = int(exact.size), int(unseen.size), int(unseen.sum())
    rows = [int(i) for i in np.flatnonzero(exact)]
    names = list(dict.fromkeys(forget_subjects))
    per_subject: dict[str, dict[str, Any]] = {}
    for s in names:
        idx = [i for i, t in enumerate(forget_subjects) if t == s]
        hit = [i for i in idx if exact[i]]
        p = fisher_greater(len(hit), len(idx), m, big_n)
        per_subject[str(s)] = {
            "rows": hit,
            "count": len(hit),
            "of": len(idx),
            "p_value": p,
            "flagged": p < alpha / max(len(names), 1),
        }
    p_all = fisher_greater(len(rows), n, m, big_n)
    record = {
        "rows": rows,
        "count": len(rows),
        "of": n,
        "unseen_count": m,
        "unseen_of": big_n,
        "p_value": p_all,
        "flagged": p_all < alpha,
        "subjects": per_subject,
    }
    record["sentence"] = _sentence(record)
    return record


def _sentence(r: dict[str, Any]) -> str:
    if not r["count"]:
        seen = f"{r['unseen_count']} of {r['unseen_of']}"
        return f"No forget row is answered word for word (people never seen: {seen})."
    who = ", ".join(f"{s} {v['count']}" for s, v in r["subjects"].items() if v["count"])
    judged = (
        "beyond the rate of people never seen"
        if r["flagged"] or any(v["flagged"] for v in r["subjects"].values())
        else "not beyond the rate of people never seen at this holdout's size"
    )
    return (
        f"{r['count']} of {r['of']} forget rows are still answered word for word ({who}); people never seen: "
        f"{r['unseen_count']} of {r['unseen_of']} (one-sided Fisher p = {r['p_value']:.3g}: {judged})."
    )


def apply_verbatim(verdict: dict[str, Any], record: dict[str, Any]) -> list[str]:
    """Mark the subjects the check flags as ``recognisable`` (flagged by ``verbatim``; when the request is
    flagged as a whole, every subject with a verbatim row). Returns the subjects it changed."""
    changed = []
    for r in verdict["subjects"]:
        v = record["subjects"].get(str(r["subject"]))
        if not v or not v["count"] or not (v["flagged"] or record["flagged"]):
            continue
        r["flagged_by"] = {**r.get("flagged_by", {}), "verbatim": "recognisable"}
        r["verbatim"] = {k: v[k] for k in ("count", "of", "p_value")}
        if r["status"] in ("forgotten", "undecided"):  # a subject already failing keeps its status
            r["status"] = "recognisable"
            changed.append(r["subject"])
    return changed
