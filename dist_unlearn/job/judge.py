"""The job's verdict: every subject of the request judged against the audit's unseen rows by every test
(:mod:`dist_unlearn.eval.subject_verdict`), the aggregate loss evidence of
:func:`dist_unlearn.eval.verdict.decide` kept next to it.

The tests are the task's membership attacks (:mod:`dist_unlearn.eval.attacks`) and, for a causal LM whose
answers were generated, the extraction test (statistic ``1 - ROUGE-L recall`` of the greedy answer,
:mod:`dist_unlearn.eval.extraction`). The job is ``forgotten`` only when every subject is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dist_unlearn.eval.attacks import statistic_auc
from dist_unlearn.eval.subject_verdict import AuditSettings, job_status, judge_subjects
from dist_unlearn.eval.verbatim import apply_verbatim, verbatim_record
from dist_unlearn.eval.verdict import decide
from dist_unlearn.job.evidence import Measurement

EXPLAINED = (
    "Each subject (dist_unlearn.eval.subject_verdict) is placed among the audit's unseen rows by every "
    "test: its mean quantile must lie inside 0.5 +- h (recognisable below: still fitted better than data "
    "never seen; conspicuous above: pushed past it, which also tells it apart). The job is forgotten only "
    "when every subject is. This asks whether each subject looks like one the model never saw; removing a "
    "whole class or capability is a different goal (a model retrained without a class still tells it apart), "
    "judged against retraining in the experiments (dist-unlearn run), not by this audit."
)


def subject_tests(
    m: Measurement, forget_index: Sequence[int] | None = None, holdout_index: Sequence[int] | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Test name -> (forget rows' statistics, unseen rows' statistics) of a measurement, optionally on
    subsets of the forget and holdout rows."""
    f, u = m.stats["forget"], m.stats["holdout"]
    if forget_index is not None:
        f = f.subset(forget_index)
    if holdout_index is not None:
        u = u.subset(holdout_index)
    tests = {name: (f.values[name], u.values[name]) for name in f.values}
    if "forget" in m.extraction and "holdout" in m.extraction:
        ef, eu = m.extraction["forget"], m.extraction["holdout"]
        if forget_index is not None:
            ef = ef.subset(list(forget_index))
        if holdout_index is not None:
            eu = eu.subset(list(holdout_index))
        tests["extraction"] = (1.0 - ef.rouge_l, 1.0 - eu.rouge_l)
    return tests


def design_pool(
    m: Measurement, holdout_subjects: list[Any] | None, calibration_subjects: list[Any] | None
) -> dict[str, tuple[np.ndarray, list[Any]]] | None:
    """Test -> (statistics, subjects) of the audit holdout rows and the calibration rows together: every
    never-seen subject the job has, to estimate how alike one subject's rows are (the design effect); None
    when the calibration rows were not measured or either part has no subject column."""
    if "calibration" not in m.stats or holdout_subjects is None or calibration_subjects is None:
        return None
    u, c = m.stats["holdout"], m.stats["calibration"]
    subjects = list(holdout_subjects) + list(calibration_subjects)
    pool = {name: (np.concatenate([u.values[name], c.values[name]]), subjects) for name in u.values}
    if "extraction" in subject_tests(m) and "calibration" in m.extraction:
        rouge = np.concatenate([m.extraction["holdout"].rouge_l, m.extraction["calibration"].rouge_l])
        pool["extraction"] = (1.0 - rouge, subjects)
    return pool if set(pool) == set(subject_tests(m)) else None


def subset_aucs(
    m: Measurement, forget_index: Sequence[int] | None = None, holdout_index: Sequence[int] | None = None
) -> dict[str, float | None]:
    """Forget-vs-unseen AUC of every test on (subsets of) a measurement's rows."""
    return {
        name: statistic_auc(f, u) for name, (f, u) in subject_tests(m, forget_index, holdout_index).items()
    }


def add_rates(verdict: dict[str, Any], m: Measurement, forget_subjects: list[Any]) -> None:
    """What each subject's rows give away directly, next to the same rate on unseen rows: for a causal LM
    whose answers were generated, ``extraction`` (``exact``, ``rouge_l``: what the model says about each
    subject against what it says about people it never saw); for a classifier, ``accuracy`` (forget rows
    vs unseen rows; a memorised wrong label counts as correct on its own label)."""
    rows_of = {
        r["subject"]: [i for i, s in enumerate(forget_subjects) if s == r["subject"]]
        for r in verdict["subjects"]
    }
    if "forget" in m.extraction and "holdout" in m.extraction:
        ex, unseen = m.extraction["forget"], m.extraction["holdout"]
        for r in verdict["subjects"]:
            rows = rows_of[r["subject"]]
            r["extraction"] = {
                "exact": float(ex.exact[rows].mean()),
                "rouge_l": float(ex.rouge_l[rows].mean()),
            }
        verdict["extraction_unseen"] = {
            "exact": float(unseen.exact.mean()),
            "rouge_l": float(unseen.rouge_l.mean()),
        }
    correct, unseen_correct = m.stats["forget"].correct, m.stats["holdout"].correct
    if correct is not None and unseen_correct is not None:
        for r in verdict["subjects"]:
            r["accuracy"] = float(correct[rows_of[r["subject"]]].mean())
        verdict["accuracy_unseen"] = float(unseen_correct.mean())


def job_verdict(
    before: Measurement | None,
    after: Measurement,
    before_record: dict[str, Any] | None,
    after_record: dict[str, Any],
    forget_subjects: list[Any],
    holdout_subjects: list[Any] | None,
    settings: AuditSettings,
    calibration_subjects: list[Any] | None = None,
) -> dict[str, Any]:
    """The verdict record of a job (``audit.json`` ``verdict``).

    Args:
        before, after: the measurements at the original and the delivered weights (``before`` None when
            only one model is audited).
        before_record, after_record: their evidence records (:func:`dist_unlearn.job.evidence
            .evidence_record`).
        forget_subjects: the subject of each forget row; holdout_subjects: of each audit holdout row.
        settings: the per-subject verdict's settings.
        calibration_subjects: the subject of each calibration row, when those rows were measured too (their
            subjects join the design effect's estimate, :func:`design_pool`).

    Returns:
        Without a holdout: :func:`decide`'s record (``unknown_without_holdout``) with ``subjects`` None.
        Otherwise :func:`judge_subjects`'s record, each subject with its status and quantile ``before``,
        plus ``before_status``, ``aggregate`` (:func:`decide` of the loss evidence), ``changed`` and
        ``explained``.
    """
    aggregate = decide(after_record, before=before_record)
    if "holdout" not in after.stats:
        aggregate["subjects"] = None
        aggregate["before_status"] = decide(before_record)["status"] if before_record else None
        aggregate["explained"] = EXPLAINED
        return aggregate
    design = design_pool(after, holdout_subjects, calibration_subjects)
    verdict = judge_subjects(subject_tests(after), forget_subjects, holdout_subjects, settings, design)
    verdict["before_status"] = None
    if before is not None:
        earlier_design = design_pool(before, holdout_subjects, calibration_subjects)
        earlier = judge_subjects(
            subject_tests(before), forget_subjects, holdout_subjects, settings, earlier_design
        )
        verdict["before_status"] = earlier["status"]
        then = {r["subject"]: r for r in earlier["subjects"]}
        for r in verdict["subjects"]:
            was = then[r["subject"]]
            r["before"] = {
                "status": was["status"],
                "quantile": was["quantile"],
                "tests": {
                    t: {"quantile": x["quantile"], "status": x["status"]} for t, x in was["tests"].items()
                },
            }
    add_rates(verdict, after, forget_subjects)
    if "forget" in after.extraction and "holdout" in after.extraction:
        forget_exact, unseen_exact = after.extraction["forget"].exact, after.extraction["holdout"].exact
        check = verbatim_record(forget_exact, forget_subjects, unseen_exact, settings.alpha)
        verdict["verbatim"] = check
        if apply_verbatim(verdict, check):
            verdict["status"], verdict["sentence"] = job_status(verdict)
        if check["count"]:
            verdict["sentence"] += " " + check["sentence"]
    verdict["aggregate"] = aggregate
    verdict["changed"] = aggregate["changed"]
    if aggregate["changed"] is False:
        verdict["sentence"] += " The run did not change the forget rows' losses."
    verdict["explained"] = EXPLAINED
    return verdict


def verdict_of(job: Any) -> dict[str, Any]:
    """:func:`job_verdict` of a job's state (:class:`~dist_unlearn.job.recipe.JobState`) after measuring; the
    verbatim rows named by their ids (as in ``forget_ids.txt``)."""
    audit = job.cfg.audit
    verdict = job_verdict(
        job.measured.get("before"),
        job.measured["after"],
        job.before,
        job.after,
        job.subjects.forget,
        job.subjects.of_holdout(job.split.audit) if job.split is not None else None,
        AuditSettings(alpha=audit.alpha, family=audit.family, min_halfwidth=audit.min_halfwidth),
        job.subjects.of_holdout(job.split.calibration) if job.split is not None else None,
    )
    if verdict.get("verbatim"):
        verdict["verbatim"]["ids"] = [job.selection.ids[i] for i in verdict["verbatim"]["rows"]]
    return verdict
