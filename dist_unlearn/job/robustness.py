"""The job's robustness probes: does the forgetting survive a nudge? (:mod:`dist_unlearn.eval.probes`)

Each probe makes a copy of the delivered model, nudges it, and re-runs the per-subject verdict on it:

- ``benign_relearning``: one epoch of fine-tuning on the retained rows only (capped at
  ``probes.relearn_max_passes`` example passes). A model that never saw the subjects cannot learn them from
  other rows; one that only hid them may give them back.
- ``targeted_relearning``: fine-tune on half of each subject's rows (subjects with two rows or more) and
  judge the other half. The audit's unseen subjects get the same treatment (half of each trained on, the
  other half the reference), so the forgotten subjects are compared with never-seen subjects that were
  relearned alike: learning a name from half of a person's rows lowers the loss of the other half even for
  a person the model never saw.
- ``quantize_<b>bit``: round-to-nearest weight quantization (per output channel).

For each probe the record shows the per-subject verdict, every test's forget-vs-unseen AUC on the rows it
judges, the same AUCs of the original and of the delivered model on those rows, and the share of the gap
that returned,

    returned = (AUC_probe - AUC_delivered) / (AUC_original - AUC_delivered)

(None when unlearning moved the AUC by less than 0.05: no gap to speak of). Work is counted under the cost
role ``probe``, apart from the unlearning. The delivered model is never modified; its parameters' sha256 is
compared before and after the probes and recorded.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import nn

from dist_unlearn.cost import CostCounter
from dist_unlearn.eval.subject_verdict import AuditSettings, judge_subjects
from dist_unlearn.job.evidence import measure_model
from dist_unlearn.job.judge import subject_tests, subset_aucs

MIN_GAP = 0.05
"""Unlearning must have moved a test's AUC by at least this for a returned share to be computed."""


def parameters_sha256(model: nn.Module) -> str:
    """sha256 over every parameter and buffer (names, shapes, bytes): the model's weights, bit for bit."""
    h = hashlib.sha256()
    for name, t in list(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def as_probe(cost: dict[str, Any] | None) -> dict[str, Any]:
    """A method's cost record with all its work moved to the role ``probe``."""
    if not cost:
        return {}
    kinds = {k: e.get("examples", 0.0) for k, e in cost.get("by_kind", {}).items()}
    return {**cost, "by_role": {"probe": {"by_kind": kinds}}}


def halves(groups: dict[Any, list[int]], seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of each group of two rows or more: ``(train rows, judged rows)``; the judged half gets
    the extra row of an odd group. Single-row groups are left out."""
    rng = np.random.default_rng(seed)
    train: list[int] = []
    judged: list[int] = []
    for rows in groups.values():
        if len(rows) < 2:
            continue
        order = [rows[int(i)] for i in rng.permutation(len(rows))]
        k = len(rows) // 2
        train += sorted(order[:k])
        judged += sorted(order[k:])
    return train, judged


def _groups(subjects: list[Any]) -> dict[Any, list[int]]:
    out: dict[Any, list[int]] = {}
    for i, s in enumerate(subjects):
        out.setdefault(s, []).append(i)
    return out


def _returned(probe: float | None, delivered: float | None, original: float | None) -> float | None:
    if probe is None or delivered is None or original is None or abs(original - delivered) < MIN_GAP:
        return None
    return (probe - delivered) / (original - delivered)


class Prober:
    """Runs the probes of one job (module docstring) and collects their records.

    Args:
        job: the job's state after the evidence at the delivered weights
            (:class:`~dist_unlearn.job.recipe.JobState`).
    """

    def __init__(self, job: Any) -> None:
        self.job = job
        self.cfg = job.cfg.probes
        a = job.cfg.audit
        self.settings = AuditSettings(alpha=a.alpha, family=a.family, min_halfwidth=a.min_halfwidth)
        self.cost = CostCounter()
        self.forget_subjects = job.subjects.forget
        self.holdout_subjects = job.subjects.of_holdout(job.split.audit) if job.split is not None else None

    def measure(self, model: nn.Module, forget: Any, holdout: Any) -> Any:
        job = self.job
        answer = job.cfg.audit.extraction and job.src.task == "causal_lm"
        sets = {"forget": forget, "holdout": holdout}
        return measure_model(
            model,
            sets,
            job.src.task,
            tokenizer=job.tokenizer,
            pad_id=job.pad_id,
            batch_size=job.cfg.eval_batch_size,
            extraction=sets if answer else None,
            cost=self.cost,
            role="probe",
        )

    def record(
        self, name: str, model: nn.Module, done: dict[str, Any], fi: list[int] | None, hi: list[int] | None
    ) -> dict[str, Any]:
        """Measure a probed copy on forget rows ``fi`` and holdout rows ``hi`` (None: all); judge it."""
        rows = self.job.rows
        forget = rows["forget"] if fi is None else rows["forget"].select(fi)
        holdout = rows["holdout"] if hi is None else rows["holdout"].select(hi)
        m = self.measure(model, forget, holdout)
        fs = self.forget_subjects if fi is None else [self.forget_subjects[i] for i in fi]
        hs = self.holdout_subjects
        if hs is not None and hi is not None:
            hs = [hs[i] for i in hi]
        verdict = judge_subjects(subject_tests(m), fs, hs, self.settings)
        probe_auc = subset_aucs(m)
        measured = self.job.measured
        delivered = subset_aucs(measured["after"], fi, hi)
        original = subset_aucs(measured["before"], fi, hi) if measured.get("before") else {}
        gaps = {
            t: {
                "original": original.get(t),
                "delivered": delivered.get(t),
                "probe": probe_auc.get(t),
                "returned": _returned(probe_auc.get(t), delivered.get(t), original.get(t)),
            }
            for t in probe_auc
        }
        hold = float(np.mean(m.stats["holdout"].values["loss"]))
        delivered_holdout = measured["after"].stats["holdout"]
        if hi is not None:
            delivered_holdout = delivered_holdout.subset(hi)
        before_hold = float(np.mean(delivered_holdout.values["loss"]))
        return {
            "probe": name,
            **done,
            "status": verdict["status"],
            "sentence": verdict["sentence"],
            "subjects": [
                {k: r[k] for k in ("subject", "n_rows", "status", "quantile", "band", "flagged_by")}
                for r in verdict["subjects"]
            ],
            "failing": verdict["failing"],
            "aucs": gaps,
            "holdout_loss": hold,
            "holdout_loss_change": (hold - before_hold) / abs(before_hold) if before_hold else None,
        }

    def benign_relearning(self) -> dict[str, Any]:
        from dist_unlearn.data import pad_collate
        from dist_unlearn.eval.probes import relearned_copy

        job, cfg = self.job, self.cfg
        twin, done = relearned_copy(
            job.model,
            job.rows["retain"],
            epochs=1,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            seed=job.cfg.seed,
            collate_fn=pad_collate(job.pad_id),
            max_passes=cfg.relearn_max_passes,
        )
        self.cost.merge(as_probe(done.pop("cost")))
        return self.record("benign_relearning", twin, done, None, None)

    def targeted_relearning(self) -> dict[str, Any]:
        from dist_unlearn.data import pad_collate
        from dist_unlearn.eval.probes import relearned_copy

        job, cfg = self.job, self.cfg
        if self.holdout_subjects is None:
            return {
                "probe": "targeted_relearning",
                "skipped": "the holdout has no subject column: never-seen subjects cannot be given the same "
                "treatment as the forgotten ones (set data.subject_column, present in the holdout too)",
            }
        f_train, f_judge = halves(_groups(self.forget_subjects), job.cfg.seed)
        h_train, h_judge = halves(_groups(self.holdout_subjects), job.cfg.seed + 1)
        if not f_judge or not h_judge:
            return {
                "probe": "targeted_relearning",
                "skipped": "no forget subject or no unseen subject has two rows or more",
            }
        import datasets

        rows = datasets.concatenate_datasets(
            [job.rows["forget"].select(f_train), job.rows["holdout"].select(h_train)]
        )
        twin, done = relearned_copy(
            job.model,
            rows,
            epochs=cfg.targeted_epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            seed=job.cfg.seed,
            collate_fn=pad_collate(job.pad_id),
        )
        self.cost.merge(as_probe(done.pop("cost")))
        done.update(
            forget_rows_trained=len(f_train),
            unseen_rows_trained=len(h_train),
            forget_rows_judged=len(f_judge),
            unseen_rows_judged=len(h_judge),
        )
        return self.record("targeted_relearning", twin, done, f_judge, h_judge)

    def quantized(self, bits: int) -> dict[str, Any]:
        from dist_unlearn.eval.probes import quantized_copy

        twin, done = quantized_copy(self.job.model, bits)
        return self.record(f"quantize_{bits}bit", twin, done, None, None)


def run_probes(job: Any) -> dict[str, Any]:
    """Every probe of the job's ``probes`` section on copies of ``job.model`` (module docstring).

    Returns:
        ``{"enabled", "settings", "probes": [...], "cost", "delivered_model_sha256",
        "delivered_model_unchanged"}`` (``{"enabled": False, ...}`` when switched off or without a holdout).
    """
    cfg = job.cfg.probes
    if not cfg.enabled:
        return {"enabled": False, "why": "probes: false in the job"}
    if job.rows.get("holdout") is None:
        return {"enabled": False, "why": "no holdout: the probes judge against unseen rows"}
    fingerprint = parameters_sha256(job.model)
    prober = Prober(job)
    probes = []
    for step in ("benign_relearning", "targeted_relearning"):
        job.log(f"probe: {step.replace('_', ' ')} (on a copy)")
        probes.append(getattr(prober, step)())
    for bits in cfg.quantize_bits:
        job.log(f"probe: {bits}-bit weight quantization (on a copy)")
        probes.append(prober.quantized(bits))
    after = parameters_sha256(job.model)
    return {
        "enabled": True,
        "settings": cfg.model_dump(),
        "probes": probes,
        "cost": prober.cost.as_dict(),
        "delivered_model_sha256": fingerprint,
        "delivered_model_unchanged": after == fingerprint,
    }
