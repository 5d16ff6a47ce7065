"""Is the data encoded as it was at fine-tuning? A cheap check before the expensive work.

A fine-tuned model fits its training rows better than rows it never saw. If the job encodes the rows
differently from the fine-tune (another ``prompt_template`` or ``response_prefix``, a chat template where
there was none, another label column), the training rows look as unfamiliar as the holdout's, the audit's
"before" shows nothing to forget, and unlearning would chase noise. So, after the model is loaded and before
anything else, the mean loss of a small seeded sample of training rows is compared with that of the holdout:

    clearly below  <=>  mean_train <= (1 - margin) mean_holdout   or   AUC(train vs holdout) >= min_auc

(``margin`` 0.1, ``min_auc`` 0.6, the loss attack's AUC: 1 when every training row is fitted better than
every holdout row). Otherwise the job stops with a :class:`~dist_unlearn.errors.DataError` naming both
numbers and the format keys of the layout. ``audit.format_check: false`` turns the check off for a model
that generalises so well that its training rows are not fitted better. Without a holdout nothing is checked.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dist_unlearn.errors import DataError
from dist_unlearn.eval.attacks import statistic_auc

SAMPLE = 32
"""Rows of each side the check reads (forward passes only)."""
MARGIN = 0.1
MIN_AUC = 0.6

FORMAT_KEYS = {
    "prompt_response": (
        "prompt_column",
        "response_column",
        "prompt_template",
        "response_prefix",
        "chat",
        "add_eos",
    ),
    "text": ("text_column", "max_length"),
    "classification": ("text_column", "label_column", "max_length"),
}


def format_keys(data: Any, kind: str) -> dict[str, Any]:
    """The job's ``data`` keys that decide how a row of this layout becomes tokens, with their values."""
    return {k: getattr(data, k) for k in FORMAT_KEYS[kind]}


def judge_format(train_losses: np.ndarray, holdout_losses: np.ndarray) -> dict[str, Any]:
    """The check's numbers and decision (module docstring)."""
    t, h = float(np.mean(train_losses)), float(np.mean(holdout_losses))
    auc = statistic_auc(train_losses, holdout_losses)
    ok = t <= (1.0 - MARGIN) * h or (auc is not None and auc >= MIN_AUC)
    return {
        "train_loss": t,
        "holdout_loss": h,
        "auc": auc,
        "rows": [int(len(train_losses)), int(len(holdout_losses))],
        "margin": MARGIN,
        "min_auc": MIN_AUC,
        "passed": bool(ok),
    }


def check_format(job: Any) -> dict[str, Any] | None:
    """Run the check on a job after its rows are loaded (:class:`~dist_unlearn.job.recipe.JobState`).

    Returns:
        The check's record, or None when it was off or there is no holdout.

    Raises:
        DataError: the training rows are not fitted clearly better than the holdout's.
    """
    from dist_unlearn.data.split import sample_rows
    from dist_unlearn.job.evidence import per_example

    cfg, rows = job.cfg, job.rows
    if not cfg.audit.format_check or rows.get("holdout") is None:
        return None
    retain, holdout = rows["retain"], rows["holdout"]
    train_rows = retain.select(sample_rows(len(retain), SAMPLE, cfg.seed))
    held_rows = holdout.select(sample_rows(len(holdout), SAMPLE, cfg.seed))
    kw = {"pad_id": job.pad_id, "batch_size": cfg.eval_batch_size}
    record = judge_format(
        per_example(job.model, train_rows, job.src.task, **kw)[0],
        per_example(job.model, held_rows, job.src.task, **kw)[0],
    )
    if job.audit_cost is not None:
        job.audit_cost.add("loss", sum(record["rows"]), calls=2, role="audit")
    keys = format_keys(cfg.data, job.fmt.kind)
    record["format"] = keys
    if not record["passed"]:
        auc = "n/a" if record["auc"] is None else f"{record['auc']:.2f}"
        raise DataError(
            f"the training rows are not fitted clearly better than the holdout under the configured "
            f"format: mean loss {record['train_loss']:.4g} on {record['rows'][0]} training rows vs "
            f"{record['holdout_loss']:.4g} on {record['rows'][1]} holdout rows (loss AUC {auc}; a "
            f"fine-tuned model fits its own rows at least {MARGIN:.0%} better or with AUC >= {MIN_AUC}). "
            f"The rows are probably not encoded as at fine-tuning: check the format keys "
            + ", ".join(f"data.{k}={v!r}" for k, v in keys.items())
            + ". If the model truly fits its training rows no better than unseen ones, set "
            "audit.format_check: false."
        )
    return record
