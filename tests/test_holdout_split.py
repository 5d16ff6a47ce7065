"""The job's holdout split (dist_unlearn.job.holdout): calibration rows for the stop rule, audit rows for
the verdict; and a job that uses it end to end on a tiny memorised GPT-2 (in-process)."""

from __future__ import annotations

import json

import datasets
import pytest
import torch

from dist_unlearn.errors import DataError
from dist_unlearn.job.holdout import split_holdout


def table(n_people: int = 6, per: int = 3) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {
            "id": [100 + i for i in range(n_people * per)],
            "person": [f"p{i // per}" for i in range(n_people * per)],
            "question": ["q"] * (n_people * per),
        }
    )


def test_group_split_keeps_people_whole_disjoint_and_seeded():
    t = table()
    kw = {"fraction": 0.5, "group_column": "person", "id_column": "id", "stop_rule": True}
    a, b = split_holdout(t, seed=0, **kw), split_holdout(t, seed=0, **kw)
    assert a.calibration == b.calibration  # seeded
    assert sorted(a.calibration + a.audit) == list(range(len(t)))
    assert not set(a.calibration) & set(a.audit)
    people = t["person"]
    cal_people = {people[i] for i in a.calibration}
    assert len(cal_people) == 3 and not cal_people & {people[i] for i in a.audit}
    rec = a.record
    assert rec["stop_rule"] and rec["calibration_rows"] == 9 and rec["audit_rows"] == 9
    assert rec["calibration_ids"] == [t["id"][i] for i in a.calibration]
    assert "not judged on the data used to stop" in rec["why"]
    other = split_holdout(t, seed=1, **kw)
    assert sorted(other.calibration + other.audit) == list(range(len(t)))


def test_row_split_fraction_and_no_split_cases():
    t = table()
    rows = split_holdout(t, fraction=0.25, group_column=None, id_column="id", seed=0, stop_rule=True)
    assert len(rows.calibration) == 4 and len(rows.audit) == 14
    # a method without a stop rule: everything is audit evidence, with the reason recorded
    none = split_holdout(t, fraction=0.5, group_column=None, id_column="id", seed=0, stop_rule=False,
                         why_not="npo is not a curvature method")  # fmt: skip
    assert none.calibration == [] and len(none.audit) == 18 and not none.record["stop_rule"]
    assert none.record["why"] == "npo is not a curvature method"
    zero = split_holdout(t, fraction=0.0, group_column=None, id_column="id", seed=0, stop_rule=True)
    assert zero.calibration == [] and "calibration_fraction is 0" in zero.record["why"]
    one = split_holdout(table(1), fraction=0.5, group_column="person", id_column="id", seed=0, stop_rule=True)
    assert one.calibration == [] and "too few groups" in one.record["why"]
    with pytest.raises(DataError, match="group_column='author'"):
        split_holdout(t, fraction=0.5, group_column="author", id_column="id", seed=0, stop_rule=True)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from dist_unlearn.demo.people import build_demo

    torch.set_num_threads(1)
    return build_demo(
        tmp_path_factory.mktemp("lm"), n_people=6, n_holdout=4, n_forget=1, per_person=3, epochs=40,
        n_embd=32, n_layer=1,
    )  # fmt: skip


def lm_job(lm, out, method: dict, **extra) -> dict:
    """The tiny LM's job (its data, holdout and forget ids) with ``method`` and any ``extra`` keys."""
    return {
        "model": str(lm["model"]),
        "data": {"path": str(lm["train"]), "prompt_column": "question", "response_column": "answer",
                 "prompt_template": "Question: {prompt}\nAnswer:"},
        "holdout": str(lm["holdout"]),
        "forget": {"ids_file": str(lm["forget_ids"])},
        "method": method,
        "output_dir": str(out),
        **extra,
    }  # fmt: skip


def test_job_with_forgetting_objective_splits_holdout_and_audits_on_the_rest(lm, tmp_path):
    from dist_unlearn.job import run_job

    method = {"name": "cure_newton", "objective": "npo", "max_steps": 2, "krylov_max_iter": 5}
    halves = {"calibration_fraction": 0.5, "group_column": "person"}
    cfg = lm_job(lm, tmp_path / "out", method, holdout_split=halves)
    res = run_job(cfg, log=lambda m: None)
    audit = json.loads((tmp_path / "out" / "audit.json").read_text())
    split = audit["request"]["holdout"]["split"]
    holdout_ids = [json.loads(line)["id"] for line in open(lm["holdout"])]
    assert split["stop_rule"] and sorted(split["calibration_ids"] + split["audit_ids"]) == sorted(holdout_ids)
    assert not set(split["calibration_ids"]) & set(split["audit_ids"])
    # the verdict's evidence is the audit part only
    assert res.audit["evidence"]["after"]["n_holdout"] == split["audit_rows"] == 6
    checks = audit["run"]["stop_checks"]
    assert checks and checks[0]["step"] == -1
    # the job passes each row's subject (holdout_split.group_column "person"): the stop rule is per subject
    assert (
        audit["run"]["stop_rule"]["criterion"] == "per_subject" and audit["run"]["stop_rule"]["subjects"] == 1
    )
    assert "calibration" in audit["method"]["options"]


def test_job_without_a_stop_rule_keeps_every_holdout_row_for_the_audit(lm, tmp_path):
    from dist_unlearn.job import run_job

    cfg = lm_job(lm, tmp_path / "out", {"name": "retrain", "epochs": 1})
    res = run_job(cfg, log=lambda m: None)
    split = res.audit["request"]["holdout"]["split"]
    assert not split["stop_rule"] and split["audit_rows"] == 12 and "takes no stop rule" in split["why"]
    assert res.audit["evidence"]["after"]["n_holdout"] == 12
    assert any("no forgetting stop rule" in s for s in res.audit["not_checked"])


def test_curvature_job_without_an_objective_takes_the_per_subject_route(lm, tmp_path):
    """A holdout gives calibration rows; a curvature method given no objective then runs match_unseen with
    the stop rule (before: the retain objective, which cannot move memorised rows, and no stop rule)."""
    from dist_unlearn.job import run_job

    method = {"name": "cure_newton", "max_steps": 1, "krylov_max_iter": 3, "eig_iterations": 3}
    cfg = lm_job(lm, tmp_path / "out", method)
    res = run_job(cfg, log=lambda m: None)
    split = res.audit["request"]["holdout"]["split"]
    assert split["stop_rule"] and split["calibration_rows"] > 0
    assert res.audit["method"]["options"]["objective"] == "match_unseen"
    assert res.audit["run"]["stop_checks"]
