"""Per-subject criterion: quantiles by hand, the band's null width, and a mixture an aggregate AUC hides."""

import numpy as np
import pytest

from dist_unlearn.eval.mia import loss_mia_auc
from dist_unlearn.eval.subjects import (
    SubjectBand,
    design_effect,
    halfwidth,
    subject_scores,
    unseen_quantiles,
)


def test_unseen_quantiles_by_hand():
    unseen = [1.0, 2.0, 2.0, 3.0]
    # below all, a tie with two (1 + 0.5*2)/4, between, above all
    assert unseen_quantiles([0.5, 2.0, 2.5, 9.0], unseen).tolist() == [0.0, 0.5, 0.75, 1.0]


def test_quantile_is_one_minus_subject_auc():
    rng = np.random.default_rng(0)
    unseen = rng.normal(5, 1, 50)
    rows = rng.normal(4.5, 1, 6)
    (s,) = subject_scores(rows, ["a"] * 6, unseen)
    assert s.quantile == pytest.approx(1 - loss_mia_auc(rows, unseen))


def test_mixture_that_an_aggregate_auc_passes():
    rng = np.random.default_rng(1)
    unseen = rng.gamma(4.0, 1.5, 60)
    memorised = rng.uniform(0.1, 0.3, 6)  # still fitted
    pushed = np.quantile(unseen, 0.995) + rng.uniform(1, 3, 6)  # far past unseen data
    like = rng.choice(unseen, 6) + rng.normal(0, 0.01, 6)
    losses = np.concatenate([memorised, pushed, like])
    subjects = ["amanda"] * 6 + ["justin"] * 6 + ["norma"] * 6
    assert abs(loss_mia_auc(losses[:12], unseen) - 0.5) < 0.05  # the aggregate of opposites
    got = {s.subject: s.status for s in subject_scores(losses, subjects, unseen)}
    assert got == {"amanda": "recognisable", "justin": "conspicuous", "norma": "forgotten"}


def test_band_false_alarm_rate_on_never_seen_subjects():
    rng = np.random.default_rng(2)
    flagged = 0
    trials = 400
    for _ in range(trials):
        unseen = rng.normal(0, 1, 48)
        rows = rng.normal(0, 1, 6)
        (s,) = subject_scores(rows, ["x"] * 6, unseen, band=SubjectBand(min_halfwidth=0.0))
        flagged += s.status != "forgotten"
    assert 0.01 < flagged / trials < 0.10  # alpha = 0.05


def test_design_effect_widens_band_for_correlated_subjects():
    rng = np.random.default_rng(3)
    # each unseen subject has its own offset: rows of one subject move together
    offsets = rng.normal(0, 1.0, 12)
    unseen = np.concatenate([o + rng.normal(0, 0.3, 6) for o in offsets])
    subj = np.repeat(np.arange(12), 6)
    band = SubjectBand()
    infl, used = design_effect(unseen, subj, band)
    assert used == 12 and infl > 2.0
    assert halfwidth(6, unseen.size, band, infl) > halfwidth(6, unseen.size, band)
    independent = rng.normal(0, 1, 72)
    assert design_effect(independent, subj, band)[0] < 2.0
    assert design_effect(unseen, None, band) == (1.0, 0)
