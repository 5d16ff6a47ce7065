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


def test_cost_counter_roles_split_the_total():
    c = CostCounter()
    c.add("gradient", 100)  # retain by default: 100 passes
    c.add("loss", 30, role="forget")  # 10 passes
    c.add("hvp_fd", 10, role="retain")  # 20 passes
    c.add("loss", 60, role="calibration")  # 20 passes
    d = c.as_dict()
    assert {r: e["example_passes"] for r, e in d["by_role"].items()} == pytest.approx(
        {"retain": 120.0, "forget": 10.0, "calibration": 20.0}
    )
    assert sum(c.passes_by_role().values()) == pytest.approx(c.example_passes)
    merged = CostCounter().merge(d).merge(c)
    assert merged.passes_by_role()["calibration"] == pytest.approx(40.0)
    before = c.snapshot()
    c.add("loss", 3, role="probe")
    assert cost_between(before, c.snapshot())["by_role"] == {
        "probe": {"example_passes": pytest.approx(1.0), "by_kind": {"loss": 3.0}}
    }
    with pytest.raises(KeyError, match="unknown cost role"):
        c.add("loss", 1, role="holdout")
    # a record written without roles counts as retain work
    legacy = {"by_kind": {"gradient": {"examples": 5.0, "calls": 1, "weight": 1.0}}}
    assert CostCounter().merge(legacy).passes_by_role() == {"retain": 5.0}
