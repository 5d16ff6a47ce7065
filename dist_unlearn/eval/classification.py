"""Classifier metrics against the retrained oracle (the model trained from scratch without the forget set).

- accuracy on retain / forget / test;
- Tug-of-War (Zhao et al., "What makes unlearning hard", 2024):
  ``ToW = (1 - |dAcc_forget|) (1 - |dAcc_retain|) (1 - |dAcc_test|)``, ``dAcc_s = Acc_s(model) -
  Acc_s(retrained)`` with accuracies as fractions; 1 means indistinguishable from retraining;
- Jensen-Shannon divergence of the predicted distributions to the retrained model's, averaged over examples:
  ``JS(p, q) = 1/2 KL(p || m) + 1/2 KL(q || m)``, ``m = (p + q) / 2``, in bits by default (so in [0, 1]);
- loss-based membership-inference AUC (forget = members, test = non-members; see :mod:`.mia`);
- parameter distance to the retrained model and update norm from the original (see :mod:`.params`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dist_unlearn.errors import ConfigError, DataError
from dist_unlearn.eval.mia import loss_mia_auc
from dist_unlearn.eval.params import comparable, parameter_distance
from dist_unlearn.eval.predictions import PredictFn, Predictions, predict

SPLITS = ("retain", "forget", "test")


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose arg-max class equals the label (a row with NaN/inf counts as wrong)."""
    probs, labels = np.asarray(probs), np.asarray(labels).reshape(-1)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise DataError(f"probs of shape {probs.shape} do not match {labels.shape[0]} labels.")
    if labels.size == 0:
        raise DataError("accuracy of an empty set is undefined.")
    finite = np.all(np.isfinite(probs), axis=1)
    return float(np.mean((np.argmax(np.nan_to_num(probs, nan=-1.0), axis=1) == labels) & finite))


def _all_finite(*arrays: np.ndarray | None) -> bool:
    return all(a is not None and bool(np.all(np.isfinite(a))) for a in arrays)


def tug_of_war(acc: Mapping[str, float], acc_oracle: Mapping[str, float]) -> float:
    """Tug-of-War ``prod_s (1 - |acc[s] - acc_oracle[s]|)`` over the splits both mappings have.

    Args:
        acc: accuracies of the unlearned model, fractions in [0, 1], keyed by split name
            (``retain``, ``forget``, ``test``; a missing split is left out of the product).
        acc_oracle: the retrained model's accuracies, same keys.

    Returns:
        ToW in [0, 1].
    """
    splits = [s for s in SPLITS if s in acc and s in acc_oracle and acc[s] is not None]
    if "forget" not in splits or "retain" not in splits:
        raise ConfigError(
            f"tug_of_war needs 'retain' and 'forget' accuracies, got {sorted(acc)} / {sorted(acc_oracle)}."
        )
    tow = 1.0
    for s in splits:
        for name, value in ((f"acc[{s!r}]", acc[s]), (f"acc_oracle[{s!r}]", acc_oracle[s])):
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"{name} = {value!r} is not a fraction in [0, 1] (pass 0.93, not 93).")
        tow *= 1.0 - abs(float(acc[s]) - float(acc_oracle[s]))
    return tow


def _check_distributions(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, q = np.atleast_2d(np.asarray(p, np.float64)), np.atleast_2d(np.asarray(q, np.float64))
    if p.shape != q.shape:
        raise DataError(f"distributions of shapes {p.shape} and {q.shape} cannot be compared.")
    if np.any(p < 0) or np.any(q < 0) or not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))):
        raise DataError("probabilities must be finite and non-negative.")
    return p / p.sum(axis=1, keepdims=True), q / q.sum(axis=1, keepdims=True)


def _kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return terms.sum(axis=1)


def js_divergence(
    p: np.ndarray, q: np.ndarray, *, base: float | None = 2.0, reduction: str = "mean"
) -> float | np.ndarray:
    """Jensen-Shannon divergence between rows of ``p`` and ``q`` (each row a distribution, renormalised).

    Equals ``scipy.spatial.distance.jensenshannon(p_i, q_i, base) ** 2`` row by row.

    Args:
        p, q: arrays ``[N, C]`` (or one distribution ``[C]``).
        base: logarithm base (2: bits, in [0, 1]; None: nats).
        reduction: ``"mean"`` over rows or ``"none"`` for the per-row array.
    """
    p, q = _check_distributions(p, q)
    m = 0.5 * (p + q)
    js = np.maximum(0.5 * _kl_rows(p, m) + 0.5 * _kl_rows(q, m), 0.0)
    if base is not None:
        js = js / np.log(base)
    return _reduce(js, reduction)


def kl_divergence(p: np.ndarray, q: np.ndarray, *, reduction: str = "mean") -> float | np.ndarray:
    """``KL(p || q)`` in nats row by row (inf where q = 0 < p)."""
    p, q = _check_distributions(p, q)
    return _reduce(_kl_rows(p, q), reduction)


def _reduce(values: np.ndarray, reduction: str) -> float | np.ndarray:
    if reduction == "mean":
        return float(values.mean())
    if reduction == "none":
        return values
    raise ConfigError(f"reduction must be 'mean' or 'none', got {reduction!r}.")


@dataclass
class ClassifierReference:
    """Predictions of the retrained oracle, computed once and reused for every method's evaluation."""

    predictions: dict[str, Predictions]
    model: torch.nn.Module | None = None


def classifier_reference(
    oracle: torch.nn.Module,
    *,
    retain: Any,
    forget: Any,
    test: Any = None,
    predict_fn: PredictFn | None = None,
    batch_size: int = 256,
    collate_fn: Callable | None = None,
) -> ClassifierReference:
    """Run the retrained model once per split; pass the result as ``oracle=`` to evaluate_classifier."""
    splits = {"retain": retain, "forget": forget, "test": test}
    preds = {
        name: predict(oracle, data, batch_size=batch_size, predict_fn=predict_fn, collate_fn=collate_fn)
        for name, data in splits.items()
        if data is not None
    }
    return ClassifierReference(predictions=preds, model=oracle)


def evaluate_classifier(
    model: torch.nn.Module,
    *,
    retain: Any,
    forget: Any,
    test: Any = None,
    oracle: torch.nn.Module | ClassifierReference,
    original: torch.nn.Module | None = None,
    predict_fn: PredictFn | None = None,
    batch_size: int = 256,
    collate_fn: Callable | None = None,
) -> dict[str, float | None]:
    """All classifier metrics of ``model`` against the retrained ``oracle``.

    Args:
        model: the unlearned classifier.
        retain, forget, test: the splits (test may be None: then no test accuracy, ToW over two splits,
            no MIA).
        oracle: the retrained model, or a :class:`ClassifierReference` from :func:`classifier_reference`.
        original: the model before unlearning, for ``update_norm``.
        predict_fn, batch_size, collate_fn: see :func:`dist_unlearn.eval.predictions.predict`.

    Returns:
        Flat dict (``None`` where not computable):
        ``acc_{retain,forget,test}``, ``oracle_acc_{...}``, ``tow``, ``js_{retain,forget,test}`` (bits),
        ``loss_{retain,forget,test}`` (mean cross-entropy), ``nonfinite_fraction_{...}`` (rows with NaN/inf
        outputs: they count as wrong; JS, loss and MIA are then None), ``mia_auc`` / ``oracle_mia_auc``
        (loss attack, forget vs test) and ``mia_auc_gap = |mia_auc - oracle_mia_auc|``,
        ``param_distance`` (to the oracle), ``update_norm`` (to ``original``).
    """
    reference = (
        oracle
        if isinstance(oracle, ClassifierReference)
        else classifier_reference(
            oracle,
            retain=retain,
            forget=forget,
            test=test,
            predict_fn=predict_fn,
            batch_size=batch_size,
            collate_fn=collate_fn,
        )
    )
    splits = {"retain": retain, "forget": forget, "test": test}
    out: dict[str, float | None] = {}
    acc, acc_ref = {}, {}
    preds: dict[str, Predictions] = {}
    for name, data in splits.items():
        if data is None:
            continue
        if name not in reference.predictions:
            raise ConfigError(f"the oracle reference has no {name!r} predictions; rebuild it with {name}=...")
        p = preds[name] = predict(
            model, data, batch_size=batch_size, predict_fn=predict_fn, collate_fn=collate_fn
        )
        r = reference.predictions[name]
        if p.labels is None:
            raise DataError(f"the {name} split has no labels (looked for {list(('labels', 'label', 'y'))}).")
        if len(p) != len(r):
            raise DataError(f"{name}: {len(p)} predictions but the oracle reference has {len(r)}.")
        acc[name], acc_ref[name] = accuracy(p.probs, p.labels), accuracy(r.probs, r.labels)
        out[f"acc_{name}"], out[f"oracle_acc_{name}"] = acc[name], acc_ref[name]
        # a diverged model (NaN/inf outputs) still gets accuracies; undefined metrics become None
        out[f"js_{name}"] = js_divergence(p.probs, r.probs) if _all_finite(p.probs, r.probs) else None
        out[f"loss_{name}"] = float(p.losses.mean()) if _all_finite(p.losses) else None
        out[f"nonfinite_fraction_{name}"] = float(np.mean(~np.all(np.isfinite(p.probs), axis=1)))
    out["tow"] = tug_of_war(acc, acc_ref)
    out["mia_auc"] = out["oracle_mia_auc"] = out["mia_auc_gap"] = None
    if "test" in preds:
        ref = reference.predictions
        if _all_finite(preds["forget"].losses, preds["test"].losses):
            out["mia_auc"] = loss_mia_auc(preds["forget"].losses, preds["test"].losses)
        if _all_finite(ref["forget"].losses, ref["test"].losses):
            out["oracle_mia_auc"] = loss_mia_auc(ref["forget"].losses, ref["test"].losses)
        if out["mia_auc"] is not None and out["oracle_mia_auc"] is not None:
            out["mia_auc_gap"] = abs(out["mia_auc"] - out["oracle_mia_auc"])
    out.update(parameter_metrics(model, reference.model, original))
    return out


def parameter_metrics(
    model: torch.nn.Module, oracle: torch.nn.Module | None, original: torch.nn.Module | None
) -> dict[str, float | None]:
    """``param_distance`` to the oracle and ``update_norm`` from the original, None when not comparable
    (no model given, or different parameter names/shapes, e.g. LoRA vs full)."""
    out: dict[str, float | None] = {"param_distance": None, "update_norm": None}
    if oracle is not None and comparable(model, oracle):
        out["param_distance"] = parameter_distance(model, oracle)
    if original is not None and comparable(model, original):
        out["update_norm"] = parameter_distance(model, original)
    return out
