"""Evaluation against the retrained oracle: metrics, resources, results.json and the report.

Classifiers: :func:`evaluate_classifier` (accuracy, Tug-of-War, JS divergence, MIA, parameter distances).
Causal LMs: :func:`evaluate_lm` (TOFU-style forget quality, model utility, perplexity, MIA).
Without a retrained model (the user's audit): :func:`row_statistics` (the membership attacks of the field,
per row), :func:`extract` (greedy answers), :func:`judge_subjects` (the per-subject verdict over them),
:func:`quantized_copy` / :func:`relearned_copy` (robustness probes on copies).
Both experiment evaluations accept a precomputed oracle reference (:func:`classifier_reference`,
:func:`lm_reference`) so the retrained model is run once for all methods. :func:`measure_resources` times
a block; :func:`write_results` / :func:`write_report` write ``results.json`` and ``report.md`` + PNGs
atomically.

Submodules are imported on first use (``dist-unlearn report`` must not pay for torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "AuditSettings": "dist_unlearn.eval.subject_verdict",
    "RowStats": "dist_unlearn.eval.attacks",
    "attack_aucs": "dist_unlearn.eval.attacks",
    "extract": "dist_unlearn.eval.extraction",
    "judge_subjects": "dist_unlearn.eval.subject_verdict",
    "quantized_copy": "dist_unlearn.eval.probes",
    "relearned_copy": "dist_unlearn.eval.probes",
    "row_statistics": "dist_unlearn.eval.attacks",
    "subject_scores": "dist_unlearn.eval.subjects",
    "ClassifierReference": "dist_unlearn.eval.classification",
    "LMReference": "dist_unlearn.eval.lm",
    "Predictions": "dist_unlearn.eval.predictions",
    "QAFormat": "dist_unlearn.eval.text",
    "QAScores": "dist_unlearn.eval.lm",
    "ResourceUsage": "dist_unlearn.eval.resources",
    "SCHEMA_VERSION": "dist_unlearn.eval.results",
    "accuracy": "dist_unlearn.eval.classification",
    "answer_logprobs": "dist_unlearn.eval.lm",
    "atomic_write_bytes": "dist_unlearn.eval.results",
    "auc_score": "dist_unlearn.eval.mia",
    "classifier_reference": "dist_unlearn.eval.classification",
    "evaluate_classifier": "dist_unlearn.eval.classification",
    "evaluate_lm": "dist_unlearn.eval.lm",
    "forget_quality": "dist_unlearn.eval.lm",
    "generate_answers": "dist_unlearn.eval.text",
    "harmonic_mean": "dist_unlearn.eval.lm",
    "js_divergence": "dist_unlearn.eval.classification",
    "kl_divergence": "dist_unlearn.eval.classification",
    "lm_reference": "dist_unlearn.eval.lm",
    "load_results": "dist_unlearn.eval.results",
    "loss_mia_auc": "dist_unlearn.eval.mia",
    "measure_resources": "dist_unlearn.eval.resources",
    "method_record": "dist_unlearn.eval.results",
    "min_k_mia_auc": "dist_unlearn.eval.mia",
    "min_k_scores": "dist_unlearn.eval.mia",
    "parameter_distance": "dist_unlearn.eval.params",
    "parameter_norm": "dist_unlearn.eval.params",
    "perplexity": "dist_unlearn.eval.lm",
    "predict": "dist_unlearn.eval.predictions",
    "privleak": "dist_unlearn.eval.mia",
    "rouge_l_recall": "dist_unlearn.eval.text",
    "score_qa": "dist_unlearn.eval.lm",
    "to_jsonable": "dist_unlearn.eval.results",
    "token_logprobs": "dist_unlearn.eval.predictions",
    "truth_ratio_from_logprobs": "dist_unlearn.eval.lm",
    "tug_of_war": "dist_unlearn.eval.classification",
    "update_norm": "dist_unlearn.eval.params",
    "validate_results": "dist_unlearn.eval.results",
    "write_report": "dist_unlearn.eval.report",
    "write_results": "dist_unlearn.eval.results",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dist_unlearn.eval' has no attribute {name!r}")
