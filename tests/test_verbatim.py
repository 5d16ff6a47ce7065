"""Forget rows said word for word: the Fisher test against the unseen rate and what it does to the verdict."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import fisher_exact

from dist_unlearn.eval.subject_verdict import job_status, judge_subjects
from dist_unlearn.eval.verbatim import apply_verbatim, fisher_greater, verbatim_record


@pytest.mark.parametrize(
    ("k", "n", "m", "big_n"), [(3, 30, 1, 48), (2, 6, 0, 48), (1, 6, 1, 48), (5, 5, 0, 3)]
)
def test_fisher_greater_is_scipys_one_sided_exact_test(k, n, m, big_n):
    _, p = fisher_exact([[k, n - k], [m, big_n - m]], alternative="greater")
    assert fisher_greater(k, n, m, big_n) == pytest.approx(p, rel=1e-12)
    assert fisher_greater(0, n, m, big_n) == 1.0


def _verdict(forget_subjects: list[str], rng: np.random.Generator) -> dict:
    """A per-subject verdict in which every subject's losses look like the unseen rows' (all forgotten)."""
    unseen = rng.normal(size=48)
    unseen_subjects = [f"u{i // 6}" for i in range(48)]
    forget = rng.permutation(unseen)[: len(forget_subjects)]
    return judge_subjects({"loss": (forget, unseen)}, forget_subjects, unseen_subjects)


def test_one_subject_saying_two_of_six_rows_verbatim_is_flagged_by_name():
    subjects = [s for s in ("Ada", "Ivo", "Hester") for _ in range(6)]
    verdict = _verdict(subjects, np.random.default_rng(0))
    assert verdict["status"] == "forgotten"
    exact = np.zeros(18)
    exact[[1, 4]] = 1.0  # two of Ada's rows, none of anybody else's, none of the 48 unseen rows
    check = verbatim_record(exact, subjects, np.zeros(48), alpha=0.05)
    assert check["rows"] == [1, 4] and check["subjects"]["Ada"]["count"] == 2
    assert check["subjects"]["Ada"]["p_value"] == pytest.approx(fisher_greater(2, 6, 0, 48))
    assert check["subjects"]["Ada"]["flagged"] and not check["subjects"]["Ivo"]["flagged"]
    assert apply_verbatim(verdict, check) == ["Ada"]
    status, sentence = job_status(verdict)
    assert status == "partially_forgotten"
    assert "Ada (recognisable: 2 of 6 rows answered word for word" in sentence


def test_verbatim_rows_at_the_unseen_rate_are_reported_but_not_flagged():
    subjects = [s for s in ("Ada", "Ivo", "Hester", "Kasimir", "Gideon") for _ in range(6)]
    verdict = _verdict(subjects, np.random.default_rng(1))
    exact = np.zeros(30)
    exact[[2, 13, 27]] = 1.0  # 3 of 30, as the LoRA case measured; 1 of 48 unseen rows said verbatim too
    unseen = np.zeros(48)
    unseen[5] = 1.0
    check = verbatim_record(exact, subjects, unseen, alpha=0.05)
    assert check["p_value"] == pytest.approx(0.1558, abs=1e-4) and not check["flagged"]
    assert not any(v["flagged"] for v in check["subjects"].values())
    assert apply_verbatim(verdict, check) == []
    assert "3 of 30 forget rows are still answered word for word" in check["sentence"]
    assert "not beyond the rate of people never seen" in check["sentence"]


def test_a_subject_already_failing_keeps_its_status():
    subjects = ["Ada"] * 6
    verdict = _verdict(subjects, np.random.default_rng(2))
    verdict["subjects"][0]["status"] = "conspicuous"
    check = verbatim_record(np.ones(6), subjects, np.zeros(48), alpha=0.05)
    assert check["flagged"]
    assert apply_verbatim(verdict, check) == []
    assert verdict["subjects"][0]["status"] == "conspicuous"
    assert "verbatim" in verdict["subjects"][0]["flagged_by"]
