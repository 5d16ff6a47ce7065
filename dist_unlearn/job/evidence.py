"""The audit's evidence at one set of weights: every attack's statistic of the forget, retain-sample and
holdout rows, and (causal LMs) the model's greedy answers.

Per-example losses are the job's own training losses, one number per row:

- causal LM: mean next-token cross-entropy over the row's target tokens,
  ``l_i = (1/T_i) sum_{t in targets_i} -log p(x_{i,t} | x_{i,<t})`` (targets: ``labels != -100``, else every
  non-padding token), the same reduction as :class:`dist_unlearn.models.CausalLMLoss`;
- classifier: ``l_i = -log softmax(f(x_i))_{y_i}``, and accuracy = mean of ``argmax f(x_i) == y_i``.

They are the ``loss`` attack of :mod:`dist_unlearn.eval.attacks`, computed in the same forward pass as the
other attacks. :func:`measure_model` keeps the per-row statistics (the per-subject verdict reads them) and
:func:`evidence_record` turns them into the record the audit keeps (``forget_loss``, ``retain_loss``,
``holdout_loss``, ``forget_vs_holdout_auc``, ``ks_pvalue``, accuracies, each attack's AUC, the extraction
rates) using :func:`dist_unlearn.eval.verdict.loss_evidence`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from dist_unlearn.eval.attacks import RowStats, attack_aucs, row_statistics
from dist_unlearn.eval.extraction import Extraction, extract
from dist_unlearn.eval.verdict import loss_evidence


def per_example(
    model: nn.Module, rows: Any, task: str, *, pad_id: int = 0, batch_size: int = 16
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-example losses of token ``rows`` (and per-example correctness for a classifier).

    Args:
        model: the model (run in eval mode, restored afterwards).
        rows: a ``datasets.Dataset`` of token rows (:func:`dist_unlearn.data.tokenize.tokenize_rows`).
        task: ``"causal_lm"`` or ``"classification"``.
        pad_id: the padding token id.
        batch_size: rows per forward pass.

    Returns:
        ``(losses, correct)``: float64 arrays of length ``len(rows)``; ``correct`` is None for a causal LM.
    """
    stats = row_statistics(model, rows, task, pad_id=pad_id, batch_size=batch_size, attacks=("loss",))
    return stats.values["loss"], stats.correct


@dataclass
class Measurement:
    """What the audit read at one set of weights.

    Attributes:
        stats: set name (``forget``, ``retain``, ``holdout``) -> per-row attack statistics.
        extraction: set name -> greedy answers (causal LMs with extraction on; empty otherwise).
        rows: set name -> rows measured (forward passes) and rows answered (generations).
    """

    stats: dict[str, RowStats]
    extraction: dict[str, Extraction] = field(default_factory=dict)

    def work(self) -> dict[str, int]:
        """``{"forward_rows", "generated_rows", "generated_tokens"}``: the audit work this measurement did."""
        return {
            "forward_rows": sum(len(s) for s in self.stats.values()),
            "generated_rows": sum(len(e.rouge_l) for e in self.extraction.values()),
            "generated_tokens": sum(e.generated_tokens for e in self.extraction.values()),
        }


def measure_model(
    model: nn.Module,
    sets: dict[str, Any],
    task: str,
    *,
    tokenizer: Any,
    pad_id: int = 0,
    batch_size: int = 16,
    extraction: dict[str, Any] | None = None,
    cost: Any = None,
    role: str = "audit",
) -> Measurement:
    """Attack statistics of every set, and greedy answers to the prompts of ``extraction``'s sets.

    Args:
        model: the model.
        sets: ``{"forget": rows, "retain": rows, "holdout": rows or None}`` (token rows).
        task: ``"causal_lm"`` or ``"classification"``.
        tokenizer: decodes targets (zlib) and answers.
        pad_id: padding token id.
        batch_size: rows per forward pass / per generate call.
        extraction: set name -> token rows to answer (causal LMs; None: no extraction).
        cost: a :class:`~dist_unlearn.cost.CostCounter` the work is added to (forward passes as ``loss``,
            answers as ``generate``), under ``role``.
        role: the cost role (``audit`` for the audit's own evidence, ``probe`` inside a probe).
    """
    stats = {
        name: row_statistics(model, rows, task, tokenizer=tokenizer, pad_id=pad_id, batch_size=batch_size)
        for name, rows in sets.items()
        if rows is not None
    }
    answers = {
        name: extract(model, tokenizer, rows, batch_size=batch_size)
        for name, rows in (extraction or {}).items()
        if rows is not None and len(rows)
    }
    m = Measurement(stats, answers)
    if cost is not None:
        work = m.work()
        cost.add("loss", work["forward_rows"], calls=len(stats), role=role)
        if work["generated_rows"]:
            cost.add("generate", work["generated_rows"], calls=len(answers), role=role)
    return m


def extraction_sets(rows: dict[str, Any], audit: Any, task: str) -> dict[str, Any] | None:
    """The rows whose prompts the model answers (causal LMs with ``audit.extraction``): forget, audit
    holdout, and the first ``audit.extraction_retain_rows`` of the retain sample (still answered?)."""
    if not audit.extraction or task != "causal_lm":
        return None
    retain = rows["retain_sample"]
    return {
        "forget": rows["forget"],
        "holdout": rows["holdout"],
        "calibration": rows.get("calibration"),
        "retain": retain.select(range(min(len(retain), audit.extraction_retain_rows))),
    }


def extraction_summary(ex: Extraction) -> dict[str, Any]:
    """Rates of one set's greedy answers: exact (verbatim) and mean ROUGE-L recall."""
    return {
        "rows": int(ex.rouge_l.size),
        "exact": float(ex.exact.mean()),
        "rouge_l": float(ex.rouge_l.mean()),
    }


def evidence_record(m: Measurement) -> dict[str, Any]:
    """The evidence record of one measurement.

    Returns:
        ``{"forget_loss", "retain_loss", "holdout_loss", "forget_vs_holdout_auc", "ks_pvalue", "n_forget",
        "n_retain", "n_holdout", "attacks": {name: AUC}, "extraction": {set: {rows, exact, rouge_l}},
        "losses": {set: [per-example]}}`` plus ``"{set}_accuracy"`` for a classifier. Without a holdout,
        ``holdout_loss``, the AUCs and the KS p-value are None.
    """
    per = {name: s.values["loss"] for name, s in m.stats.items()}
    acc = {
        f"{name}_accuracy": float(s.correct.mean()) for name, s in m.stats.items() if s.correct is not None
    }
    ev = loss_evidence(per["forget"], per.get("holdout"))
    holdout = m.stats.get("holdout")
    record: dict[str, Any] = {
        "forget_loss": ev["forget_loss"],
        "retain_loss": float(per["retain"].mean()) if "retain" in per else None,
        "holdout_loss": ev["unseen_loss"],
        "forget_vs_holdout_auc": ev["forget_vs_unseen_auc"],
        "ks_pvalue": ev["ks_pvalue"],
        "n_forget": ev["n_forget"],
        "n_retain": int(per["retain"].size) if "retain" in per else 0,
        "n_holdout": ev["n_unseen"],
        **acc,
        "attacks": attack_aucs(m.stats["forget"], holdout) if holdout is not None and len(holdout) else None,
        "extraction": {name: extraction_summary(e) for name, e in m.extraction.items()} or None,
        "losses": {k: v.tolist() for k, v in per.items()},
    }
    # the verdict module reads its own key names
    record["forget_vs_unseen_auc"] = record["forget_vs_holdout_auc"]
    return record


def relative_change(before: float | None, after: float | None) -> float | None:
    """``(after - before) / |before|`` (None when either is missing or before is 0)."""
    if before is None or after is None or before == 0:
        return None
    return (after - before) / abs(before)
