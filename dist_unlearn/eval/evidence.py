"""Per-example losses of a task's model and the verdict records built from them.

For every model of an experiment (original, retrained oracle, each method) the forget-set and test-set
per-example losses give a :func:`~dist_unlearn.eval.verdict.loss_evidence` record; each method then gets two
verdicts (:func:`~dist_unlearn.eval.verdict.decide`): against the retrained oracle (its forget-vs-test AUC is
the target) and against unseen data alone (target 0.5 and a KS test), both with ``before`` = the original
model, so a run that changed nothing is called out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from dist_unlearn.eval.verdict import decide, loss_evidence

Log = Callable[[str], None]


def per_example_losses(
    task: Any, model: torch.nn.Module, dataset: Any, *, batch_size: int = 256
) -> np.ndarray:
    """Loss of every example of ``dataset`` under ``model`` (float64 ``[N]``).

    Classifiers: cross-entropy from the task's logits, batched (:func:`dist_unlearn.eval.predict`).
    Other tasks: ``task.loss_fn`` on one example at a time (its own reduction, e.g. mean over tokens).
    """
    if len(dataset) == 0:
        return np.zeros(0)
    if task.kind == "classification":
        from dist_unlearn.eval.predictions import predict

        preds = predict(model, _numeric(dataset), batch_size=batch_size, predict_fn=task.predict_fn)
        if preds.losses is not None:
            return np.asarray(preds.losses, dtype=np.float64)
    from dist_unlearn.data.batches import iterate_batches

    out = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in iterate_batches(_numeric(dataset), 1, shuffle=False):
                out.append(float(task.loss_fn(model, batch)))
    finally:
        model.train(was_training)
    return np.asarray(out, dtype=np.float64)


def _numeric(dataset: Any) -> Any:
    from dist_unlearn.data.batches import numeric_columns

    if getattr(dataset, "features", None) is None:
        return dataset
    return dataset.select_columns(numeric_columns(dataset))


def evidence_of(task: Any, model: torch.nn.Module, forget: Any, unseen: Any, *, batch_size: int) -> dict:
    """:func:`loss_evidence` of ``model``: forget-set vs unseen (test) per-example losses."""
    return loss_evidence(
        per_example_losses(task, model, forget, batch_size=batch_size),
        per_example_losses(task, model, unseen, batch_size=batch_size) if unseen is not None else None,
    )


def verdict_record(after: dict, *, before: dict | None, reference: dict | None) -> dict[str, Any]:
    """Both verdicts of one model: ``vs_retrained`` (oracle target) and ``vs_unseen`` (target 0.5)."""
    return {
        "evidence": after,
        "vs_retrained": decide(after, before=before, reference=reference) if reference else None,
        "vs_unseen": decide(after, before=before),
    }


def warn_verdict(name: str, record: dict[str, Any], log: Log) -> None:
    """Log a line when the forget set stays distinguishable or the run changed nothing."""
    v = record.get("vs_retrained") or record["vs_unseen"]
    if v.get("changed") is False:
        log(f"WARNING {name}: the run changed nothing (forget-set loss unchanged); {v['sentence']}")
    elif v["status"] == "not_forgotten":
        log(f"WARNING {name}: the forget set stays distinguishable. {v['sentence']}")
