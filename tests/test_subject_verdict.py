"""The audit's per-subject verdict over several tests: flags an aggregate hides, one false-alarm rate for the
whole request, and a holdout too small to decide."""

import numpy as np
import pytest

from dist_unlearn.eval.mia import loss_mia_auc
from dist_unlearn.eval.subject_verdict import AuditSettings, judge_subjects, rows_needed


def _mixture(rng):
    unseen = rng.gamma(4.0, 1.5, 60)
    memorised = rng.uniform(0.1, 0.3, 6)
    pushed = np.quantile(unseen, 0.995) + rng.uniform(1, 3, 6)
    like = rng.choice(unseen, 6) + rng.normal(0, 0.01, 6)
    return np.concatenate([memorised, pushed, like]), unseen


def test_mixture_is_flagged_by_name_while_the_aggregate_auc_is_half():
    rng = np.random.default_rng(1)
    losses, unseen = _mixture(rng)
    subjects = ["amanda"] * 6 + ["justin"] * 6 + ["norma"] * 6
    assert abs(loss_mia_auc(losses[:12], unseen) - 0.5) < 0.05
    # a second test that is the loss divided by a row constant (zlib-like): same ordering within rows
    tests = {"loss": (losses, unseen), "zlib": (losses / 40.0, unseen / 40.0)}
    rec = judge_subjects(tests, subjects, None)
    got = {r["subject"]: r["status"] for r in rec["subjects"]}
    assert got == {"amanda": "recognisable", "justin": "conspicuous", "norma": "forgotten"}
    assert rec["status"] == "partially_forgotten" and rec["failing"] == ["amanda", "justin"]
    assert "amanda (recognisable" in rec["sentence"] and "justin (conspicuous" in rec["sentence"]
    assert rec["per_test_alpha"] == pytest.approx(0.05 / 2)
    amanda = rec["subjects"][0]
    assert set(amanda["flagged_by"]) == {"loss", "zlib"} and amanda["band"][0] > 0.0


def _requests(rng, trials, offset_sd):
    """Requests of 4 never-seen subjects (6 rows each; rows of a subject share an offset, as one person's
    records do) against 12 unseen subjects, under four correlated tests."""
    for _ in range(trials):
        offsets = rng.normal(0, offset_sd, 16)
        base = np.concatenate([o + rng.normal(0, 1, 6) for o in offsets])
        subj = np.repeat(np.arange(16), 6).tolist()
        tests = {}
        for t in range(4):
            noisy = base + rng.normal(0, 0.3, base.size)
            tests[f"t{t}"] = (noisy[:24], noisy[24:])
        yield tests, subj[:24], subj[24:]


def test_false_alarm_rate_per_never_seen_subject_is_controlled_over_the_tests():
    rng = np.random.default_rng(5)
    flagged = judged = 0
    for tests, fs, us in _requests(rng, 200, offset_sd=0.6):
        rec = judge_subjects(tests, fs, us)
        flagged += len(rec["failing"])
        judged += len(rec["subjects"])
    assert flagged / judged <= 0.05
    assert rec["request_false_alarm_bound"] == pytest.approx(0.2)


def test_a_memorised_subject_is_caught_and_the_others_are_not():
    rng = np.random.default_rng(6)
    caught = others = 0
    for tests, fs, us in _requests(rng, 200, offset_sd=0.3):
        # subject 0 memorised: its rows sit below every unseen row
        memorised = {t: (np.concatenate([f[:6] - 6.0, f[6:]]), u) for t, (f, u) in tests.items()}
        rec = judge_subjects(memorised, fs, us)
        caught += rec["subjects"][0]["status"] == "recognisable"
        others += len(rec["failing"]) - (0 in rec["failing"])
    assert caught / 200 >= 0.95 and others / 600 <= 0.05


def test_single_row_subjects_need_two_over_alpha_unseen_rows_and_the_audit_says_so():
    """One row among n unseen rows sits below all of them with probability 1/(n+1) when never seen: it can
    be flagged at level alpha only when n + 1 >= 2 / alpha (exact rank law; the normal band never can)."""
    rng = np.random.default_rng(0)
    unseen = rng.normal(5, 1, 12)
    forget = np.median(unseen) + np.array([-0.01, 0.01])
    rec = judge_subjects({"loss": (forget, unseen)}, ["a", "b"], None)  # alpha 0.05, one test
    assert rec["status"] == "undecided" and rec["undecided"] == ["a", "b"]
    assert rec["subjects"][0]["unseen_rows_needed"] == 39  # 2 / 0.05 - 1
    assert "at least 39 unseen rows" in rec["sentence"]
    unseen = rng.normal(5, 1, 39)
    rec = judge_subjects({"loss": (np.array([0.01, 5.0]), unseen)}, ["a", "b"], None)
    assert [r["status"] for r in rec["subjects"]] == ["recognisable", "forgotten"]
    # rows that move together (design effect 10): no holdout lets one row be flagged; the audit says so
    assert rows_needed(1, AuditSettings().band(1), 10.0) is None


def test_rows_no_single_subject_can_flag_are_caught_together():
    rng = np.random.default_rng(0)
    unseen = rng.normal(5, 1, 12)
    rec = judge_subjects(
        {"loss": (np.array([0.01, 0.02]), unseen)}, ["a", "b"], None, AuditSettings(alpha=0.1)
    )
    assert rec["undecided"] == ["a", "b"] and rec["pooled"]["status"] == "recognisable"
    assert rec["status"] == "not_forgotten" and "together" in rec["sentence"]


def test_exact_band_has_the_stated_false_alarm_rate():
    """The exact band against brute force: the share of all C(m+n, m) interleavings outside it."""
    from itertools import combinations

    from dist_unlearn.eval.rank_null import exact_halfwidth, mann_whitney_counts

    m, n, alpha = 3, 7, 0.1
    counts = [0] * (m * n + 1)
    for pos in combinations(range(m + n), m):  # positions of the subject's rows in the pooled order
        counts[sum(p - i for i, p in enumerate(pos))] += 1  # U = unseen rows below each subject row
    assert tuple(counts) == mann_whitney_counts(m, n)
    h = exact_halfwidth(m, n, alpha)
    outside = sum(c for u, c in enumerate(counts) if abs(u / (m * n) - 0.5) > h + 1e-12)
    inside_next = sum(c for u, c in enumerate(counts) if abs(u / (m * n) - 0.5) >= h - 1e-12)
    assert outside / sum(counts) <= alpha < inside_next / sum(counts)


def test_the_design_effect_can_come_from_more_never_seen_subjects_than_the_reference():
    """Calibration subjects (never seen, not the reference) join the design effect's estimate: rows that
    move together in the larger pool widen every band; the reference distribution is unchanged."""
    rng = np.random.default_rng(7)
    audit = rng.normal(0, 1, 48)
    audit_subj = np.repeat(np.arange(8), 6).tolist()
    offsets = rng.normal(0, 1.5, 8)
    calib = np.concatenate([o + rng.normal(0, 0.3, 6) for o in offsets])
    calib_subj = np.repeat(np.arange(100, 108), 6).tolist()
    forget = rng.normal(0, 1, 12)
    tests = {"loss": (forget, audit)}
    alone = judge_subjects(tests, ["a"] * 6 + ["b"] * 6, audit_subj)
    design = {"loss": (np.concatenate([audit, calib]), audit_subj + calib_subj)}
    pooled = judge_subjects(tests, ["a"] * 6 + ["b"] * 6, audit_subj, design=design)
    assert pooled["inflation"]["loss"] > alone["inflation"]["loss"] and pooled["design_subjects"] == 16
    assert (
        pooled["subjects"][0]["tests"]["loss"]["halfwidth"]
        > alone["subjects"][0]["tests"]["loss"]["halfwidth"]
    )
    assert pooled["subjects"][0]["quantile"] == alone["subjects"][0]["quantile"]


def test_request_family_splits_alpha_over_subjects_too():
    rng = np.random.default_rng(0)
    unseen = rng.normal(0, 1, 60)
    forget = rng.normal(0, 1, 24)
    subj = np.repeat(np.arange(4), 6).tolist()
    per_subject = judge_subjects({"a": (forget, unseen), "b": (forget, unseen)}, subj, None)
    request = judge_subjects(
        {"a": (forget, unseen), "b": (forget, unseen)}, subj, None, AuditSettings(family="request")
    )
    assert per_subject["per_test_alpha"] == pytest.approx(0.025) and request[
        "per_test_alpha"
    ] == pytest.approx(0.05 / 8)
    assert request["request_false_alarm_bound"] == 0.05 and per_subject["request_false_alarm_bound"] == 0.2
    assert (
        request["subjects"][0]["tests"]["a"]["halfwidth"]
        > per_subject["subjects"][0]["tests"]["a"]["halfwidth"]
    )
    assert "for the whole request" in request["sentence"] or request["status"] != "forgotten"
