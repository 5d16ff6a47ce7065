"""An oracle-free verdict: can the forget set still be told apart from data the model never saw?

The evidence is two loss distributions at the same weights: the per-example losses of the forget set and of
unseen data (the test split, or a holdout the user gives). A model that never trained on the forget set treats
it like unseen data, so

    AUC = P(loss_forget < loss_unseen) + 1/2 P(=)   (loss attack, :func:`~dist_unlearn.eval.mia.loss_mia_auc`)

sits near 0.5 and the two-sample Kolmogorov-Smirnov test finds no difference (large p-value). A memorised
forget set has AUC near 1; an over-unlearned one (loss far above unseen data, itself a tell) near 0. When a
retrained model exists, its AUC is the target instead of 0.5 (random forget sets of a well-generalising model
are themselves only slightly distinguishable).

Status, with the thresholds recorded next to it:

- ``forgotten``: ``|AUC - target| <= auc_tolerance`` and KS p-value >= ``ks_alpha``; against a retrained
  model whose own forget losses are distinguishable from unseen data (KS p < ``ks_alpha``: a class, flipped
  labels), the AUC condition alone;
- ``not_forgotten``: ``|AUC - target| > auc_distinguishable``, or the run did not change the forget losses;
- ``partially_forgotten``: in between;
- ``unknown_without_holdout``: no unseen data was given, so nothing could be checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dist_unlearn.eval.mia import loss_mia_auc

STATUSES = ("forgotten", "partially_forgotten", "not_forgotten", "unknown_without_holdout")


@dataclass(frozen=True)
class VerdictThresholds:
    """The numbers a verdict is decided by (written into every verdict record)."""

    auc_tolerance: float = 0.1
    """|AUC - target| at or below this (and KS p >= ks_alpha) is ``forgotten``."""
    auc_distinguishable: float = 0.2
    """|AUC - target| above this is ``not_forgotten``."""
    ks_alpha: float = 0.05
    """KS p-value below this means the distributions differ."""
    unchanged_rtol: float = 1e-6
    """Mean forget loss moved by less than this (relative) from before to after: the run changed nothing."""


def loss_evidence(
    forget_losses: Sequence[float] | np.ndarray, unseen_losses: Sequence[float] | np.ndarray | None
) -> dict[str, Any]:
    """Summary of forget vs unseen per-example losses at one set of weights.

    Returns:
        ``{"forget_loss", "unseen_loss", "n_forget", "n_unseen", "forget_vs_unseen_auc", "ks_pvalue"}``; the
        last three are None without unseen data. Losses are means over examples.
    """
    f = np.asarray(forget_losses, dtype=np.float64).reshape(-1)
    out: dict[str, Any] = {
        "forget_loss": float(f.mean()) if f.size else None,
        "n_forget": int(f.size),
        "unseen_loss": None,
        "n_unseen": 0,
        "forget_vs_unseen_auc": None,
        "ks_pvalue": None,
    }
    if unseen_losses is None or len(unseen_losses) == 0 or f.size == 0:
        return out
    u = np.asarray(unseen_losses, dtype=np.float64).reshape(-1)
    from scipy.stats import ks_2samp

    finite_f, finite_u = f[np.isfinite(f)], u[np.isfinite(u)]
    out["unseen_loss"] = float(u.mean())
    out["n_unseen"] = int(u.size)
    if finite_f.size and finite_u.size:
        out["forget_vs_unseen_auc"] = loss_mia_auc(finite_f, finite_u)
        out["ks_pvalue"] = float(ks_2samp(finite_f, finite_u).pvalue)
    return out


def decide(
    after: dict[str, Any],
    before: dict[str, Any] | None = None,
    reference: dict[str, Any] | None = None,
    thresholds: VerdictThresholds | None = None,
) -> dict[str, Any]:
    """The verdict on one model from :func:`loss_evidence` records.

    Args:
        after: evidence at the unlearned weights.
        before: evidence at the original weights (detects a run that changed nothing; reported as the move).
        reference: evidence at a retrained model's weights, when one exists (its AUC becomes the target).
        thresholds: decision thresholds; defaults as in :class:`VerdictThresholds`.

    Returns:
        ``{"status", "sentence", "target_auc", "auc_gap", "changed", "thresholds"}``.
    """
    th = thresholds or VerdictThresholds()
    auc = after.get("forget_vs_unseen_auc")
    changed = None
    if before is not None and before.get("forget_loss") is not None and after.get("forget_loss") is not None:
        b, a = float(before["forget_loss"]), float(after["forget_loss"])
        changed = abs(a - b) > th.unchanged_rtol * max(abs(b), 1e-12)
    ref_auc = reference.get("forget_vs_unseen_auc") if reference else None
    target = float(ref_auc) if ref_auc is not None else 0.5
    record: dict[str, Any] = {
        "target_auc": target,
        "target": "retrained model" if ref_auc is not None else "indistinguishable (0.5)",
        "auc_gap": None,
        "changed": changed,
        "thresholds": asdict(th),
    }
    if auc is None:
        record["status"] = "unknown_without_holdout"
        record["sentence"] = (
            "No data the model never saw was given, so whether the forget set is still recognisable could "
            "not be checked" + ("; the run did not change the forget-set loss." if changed is False else ".")
        )
        return record
    gap = abs(float(auc) - target)
    record["auc_gap"] = gap
    ks = after.get("ks_pvalue")
    # The KS condition applies when the target is "indistinguishable": always without a retrained model, and
    # with one when the retrained model's own forget losses pass it (a random forget set); when the retrained
    # model itself tells the forget set apart (a class, flipped labels) its AUC alone is the target.
    ref_ks = reference.get("ks_pvalue") if reference else None
    ks_applies = ref_auc is None or (ref_ks is not None and ref_ks >= th.ks_alpha)
    ks_ok = not ks_applies or ks is None or ks >= th.ks_alpha
    desc = f"forget-vs-unseen loss AUC {auc:.3f} (target {target:.3f}"
    desc += f", KS p={ks:.3g})" if ks is not None else ")"
    if changed is False:
        record["status"] = "not_forgotten"
        record["sentence"] = f"The run changed nothing: the forget-set loss is the same as before; {desc}."
    elif gap <= th.auc_tolerance and ks_ok:
        record["status"] = "forgotten"
        record["sentence"] = f"The forget set is no longer distinguishable from unseen data: {desc}."
    elif gap > th.auc_distinguishable:
        record["status"] = "not_forgotten"
        how = "fitted better than" if float(auc) > target else "fitted worse than"
        record["sentence"] = f"The forget set is still {how} unseen data and stays recognisable: {desc}."
    else:
        record["status"] = "partially_forgotten"
        record["sentence"] = f"The forget set is closer to unseen data but partly distinguishable: {desc}."
    return record
