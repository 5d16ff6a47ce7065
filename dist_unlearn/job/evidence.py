"""The audit's evidence at one set of weights: per-example losses of the forget, retain and holdout rows.

Per-example losses are the job's own training losses, one number per row:

- causal LM: mean next-token cross-entropy over the row's target tokens,
  ``l_i = (1/T_i) sum_{t in targets_i} -log p(x_{i,t} | x_{i,<t})`` (targets: ``labels != -100``, else every
  non-padding token), the same reduction as :class:`dist_unlearn.models.CausalLMLoss`;
- classifier: ``l_i = -log softmax(f(x_i))_{y_i}``, and accuracy = mean of ``argmax f(x_i) == y_i``.

:func:`evidence` turns them into the record the audit keeps (``forget_loss``, ``retain_loss``,
``holdout_loss``, ``forget_vs_holdout_auc``, ``ks_pvalue``, accuracies) using
:func:`dist_unlearn.eval.verdict.loss_evidence`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dist_unlearn.data import make_loader, pad_collate
from dist_unlearn.data.device import model_device, to_device
from dist_unlearn.eval.verdict import loss_evidence

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@torch.no_grad()
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
    device = model_device(model)
    was_training = model.training
    model.eval()
    losses, correct = [], []
    try:
        for batch in make_loader(rows, batch_size, collate_fn=pad_collate(pad_id)):
            batch = to_device(batch, device)
            out = model(**{k: batch[k] for k in _INPUTS if k in batch})
            logits = out.logits if hasattr(out, "logits") else out[0]
            if task == "classification":
                y = batch["label"].long()
                losses.append(F.cross_entropy(logits.float(), y, reduction="none"))
                correct.append((logits.argmax(-1) == y).float())
            else:
                targets = (
                    batch["labels"]
                    if "labels" in batch
                    else batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
                )
                t = targets[:, 1:]
                lg = logits[:, :-1].float()
                tok = F.cross_entropy(
                    lg.reshape(-1, lg.shape[-1]), t.reshape(-1), ignore_index=-100, reduction="none"
                ).view(t.shape)
                mask = (t != -100).float()
                losses.append((tok * mask).sum(1) / mask.sum(1).clamp_min(1.0))
    finally:
        model.train(was_training)
    loss_arr = torch.cat(losses).double().cpu().numpy()
    corr = torch.cat(correct).double().cpu().numpy() if correct else None
    return loss_arr, corr


def evidence(
    model: nn.Module,
    sets: dict[str, Any],
    task: str,
    *,
    pad_id: int = 0,
    batch_size: int = 16,
) -> dict[str, Any]:
    """The evidence record at the model's current weights.

    Args:
        model: the model.
        sets: ``{"forget": rows, "retain": rows, "holdout": rows or None}`` (token rows).
        task: ``"causal_lm"`` or ``"classification"``.
        pad_id: padding token id.
        batch_size: rows per forward pass.

    Returns:
        ``{"forget_loss", "retain_loss", "holdout_loss", "forget_vs_holdout_auc", "ks_pvalue", "n_forget",
        "n_retain", "n_holdout", "losses": {set: [per-example]}}`` plus ``"{set}_accuracy"`` for a classifier.
        Without a holdout, ``holdout_loss``, the AUC and the KS p-value are None.
    """
    per: dict[str, np.ndarray] = {}
    acc: dict[str, float] = {}
    for name, rows in sets.items():
        if rows is None:
            continue
        losses, correct = per_example(model, rows, task, pad_id=pad_id, batch_size=batch_size)
        per[name] = losses
        if correct is not None:
            acc[f"{name}_accuracy"] = float(correct.mean())
    ev = loss_evidence(per["forget"], per.get("holdout"))
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
