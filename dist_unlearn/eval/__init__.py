"""Evaluation against the retrained oracle: metrics, resources, results.json and the report.

Classifiers: :func:`evaluate_classifier` (accuracy, Tug-of-War, JS divergence, MIA, parameter distances).
Causal LMs: :func:`evaluate_lm` (TOFU-style forget quality, model utility, perplexity, MIA).
Both accept a precomputed oracle reference (:func:`classifier_reference`, :func:`lm_reference`) so the
retrained model is run once for all methods. :func:`measure_resources` times a block;
:func:`write_results` / :func:`write_report` write ``results.json`` and ``report.md`` + PNGs atomically.
"""

from dist_unlearn.eval.classification import (
    ClassifierReference,
    accuracy,
    classifier_reference,
    evaluate_classifier,
    js_divergence,
    kl_divergence,
    tug_of_war,
)
from dist_unlearn.eval.lm import (
    LMReference,
    QAScores,
    answer_logprobs,
    evaluate_lm,
    forget_quality,
    harmonic_mean,
    lm_reference,
    perplexity,
    score_qa,
    truth_ratio_from_logprobs,
)
from dist_unlearn.eval.mia import auc_score, loss_mia_auc, min_k_mia_auc, min_k_scores, privleak
from dist_unlearn.eval.params import parameter_distance, parameter_norm, update_norm
from dist_unlearn.eval.predictions import Predictions, predict, token_logprobs
from dist_unlearn.eval.report import write_report
from dist_unlearn.eval.resources import ResourceUsage, measure_resources
from dist_unlearn.eval.results import (
    SCHEMA_VERSION,
    atomic_write_bytes,
    load_results,
    method_record,
    to_jsonable,
    validate_results,
    write_results,
)
from dist_unlearn.eval.text import QAFormat, generate_answers, rouge_l_recall

__all__ = [
    "SCHEMA_VERSION",
    "ClassifierReference",
    "LMReference",
    "Predictions",
    "QAFormat",
    "QAScores",
    "ResourceUsage",
    "accuracy",
    "answer_logprobs",
    "atomic_write_bytes",
    "auc_score",
    "classifier_reference",
    "evaluate_classifier",
    "evaluate_lm",
    "forget_quality",
    "generate_answers",
    "harmonic_mean",
    "js_divergence",
    "kl_divergence",
    "lm_reference",
    "load_results",
    "loss_mia_auc",
    "measure_resources",
    "method_record",
    "min_k_mia_auc",
    "min_k_scores",
    "parameter_distance",
    "parameter_norm",
    "perplexity",
    "predict",
    "privleak",
    "rouge_l_recall",
    "score_qa",
    "to_jsonable",
    "token_logprobs",
    "truth_ratio_from_logprobs",
    "tug_of_war",
    "update_norm",
    "validate_results",
    "write_report",
    "write_results",
]
