"""Cost counter arithmetic and the oracle-free verdict against hand-computed cases."""

import numpy as np
import pytest

from dist_unlearn.cost import PASS_WEIGHTS, CostCounter, cost_between, percent_of
from dist_unlearn.eval.verdict import decide, loss_evidence


def test_cost_counter_hand_count():
    c = CostCounter()
    c.add("gradient", 100)  # 100 passes
    c.add("hvp_fd", 50, calls=2)  # 100 passes
    c.add("loss", 30)  # 10 passes
    assert c.example_passes == pytest.approx(210.0)
    d = c.as_dict()
    assert d["by_kind"]["hvp_fd"]["calls"] == 2
    merged = CostCounter().merge(d).merge(c)
    assert merged.example_passes == pytest.approx(420.0)
    before = c.snapshot()
    c.add("hvp_exact", 10)
    spent = cost_between(before, c.snapshot())["example_passes"]
    assert spent == pytest.approx(10 * PASS_WEIGHTS["hvp_exact"])
    assert percent_of({"example_passes": 25.0}, {"example_passes": 200.0}) == pytest.approx(12.5)
    assert percent_of({"example_passes": 1.0}, None) is None
    with pytest.raises(KeyError, match="unknown cost kind"):
        c.add("backprop", 1)


def test_verdict_memorised_vs_unseen():
    rng = np.random.default_rng(0)
    unseen = rng.gamma(2.0, 1.0, 400)
    memorised = rng.gamma(2.0, 0.05, 40)  # much lower loss than unseen data
    like_unseen = rng.gamma(2.0, 1.0, 40)
    before = loss_evidence(memorised, unseen)
    assert before["forget_vs_unseen_auc"] > 0.95 and before["ks_pvalue"] < 1e-6
    assert decide(before)["status"] == "not_forgotten"
    after = loss_evidence(like_unseen, unseen)
    v = decide(after, before=before)
    assert v["status"] == "forgotten", v
    assert v["changed"] is True and v["thresholds"]["auc_tolerance"] == 0.1
    # a run that changed nothing says so, whatever the AUC
    assert decide(before, before=before)["status"] == "not_forgotten"
    assert "changed nothing" in decide(before, before=before)["sentence"]
    # no unseen data: nothing can be checked
    assert decide(loss_evidence(memorised, None))["status"] == "unknown_without_holdout"
    # against a retrained model the target is its AUC
    ref = {"forget_vs_unseen_auc": 0.62}
    assert decide({"forget_vs_unseen_auc": 0.64, "ks_pvalue": 0.01}, reference=ref)["status"] == "forgotten"
    # a retrained model that cannot tell a random forget set apart (KS p >= alpha): the unlearned model must
    # not either; one that can (a class): the AUC gap decides
    random_ref = {"forget_vs_unseen_auc": 0.485, "ks_pvalue": 0.57}
    still_memorised = {"forget_vs_unseen_auc": 0.561, "ks_pvalue": 1.5e-6}
    assert decide(still_memorised, reference=random_ref)["status"] == "partially_forgotten"
    assert (
        decide({"forget_vs_unseen_auc": 0.51, "ks_pvalue": 0.4}, reference=random_ref)["status"]
        == "forgotten"
    )
    class_ref = {"forget_vs_unseen_auc": 0.12, "ks_pvalue": 1e-120}
    assert (
        decide({"forget_vs_unseen_auc": 0.13, "ks_pvalue": 1e-100}, reference=class_ref)["status"]
        == "forgotten"
    )
