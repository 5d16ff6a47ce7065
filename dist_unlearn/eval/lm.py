"""TOFU-style evaluation of an unlearned causal LM against the model retrained without the forget set.

Data rows (dicts, or rows of a ``datasets.Dataset``)::

    {"question": str, "answer": str,
     "paraphrased_answer": str,            # forget/retain: needed for the truth ratio
     "perturbed_answers": list[str]}       # forget/retain: plausible wrong answers, >= 1

Holdout rows (never trained on, for membership inference) need only ``question`` and ``answer``.

Per question, with ``P(a|q)^(1/|a|) = exp(mean log p of a's tokens)`` (length-normalised probability):

- answer probability ``Q_A_Prob = mean_rows P(a|q)^(1/|a|)``;
- truth ratio (TOFU paper, Maini et al. 2024)
  ``R = mean_j P(a_pert_j|q)^(1/|a_pert_j|) / P(a_para|q)^(1/|a_para|)``
  (``perturbed_mean="geometric"`` takes the geometric mean over j instead, as TOFU's code and
  open-unlearning do);
- forget quality = p-value of the two-sample KS test between the unlearned and the retrained model's truth
  ratios on the forget set (1 = indistinguishable); ``forget_truth_ratio = mean min(R, 1/R)`` and
  ``retain_Truth_Ratio = mean max(0, 1 - R)`` (open-unlearning's aggregations);
- ROUGE-L recall of greedy answers vs the reference answer (:func:`dist_unlearn.eval.text.rouge_l_recall`);
- perplexity ``exp(-sum log p / #tokens)`` of the answers given the questions (token-weighted);
- model utility = harmonic mean of the retain-set ``Q_A_Prob``, ``Q_A_ROUGE`` (when ``rouge=True``) and
  ``Truth_Ratio``. TOFU's utility also averages in the Real Authors and World Facts sets (9 numbers); we
  have no such data offline, so ours is the 3-number retain version;
- membership inference (forget = members, holdout = non-members): loss attack ``mia_loss`` and Min-K%
  ``mia_min_k`` AUCs, and ``privleak = (AUC_min_k - AUC_min_k(retrained)) / AUC_min_k(retrained) * 100``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.special import logsumexp

from dist_unlearn.errors import ConfigError, DataError
from dist_unlearn.eval.classification import parameter_metrics
from dist_unlearn.eval.mia import loss_mia_auc, min_k_mia_auc, privleak
from dist_unlearn.eval.predictions import token_logprobs
from dist_unlearn.eval.text import QAFormat, generate_answers, pad_token_id, rouge_l_recall

TRUTH_FIELDS = ("question", "answer", "paraphrased_answer", "perturbed_answers")


def rows_of(data: Any, *, truth: bool, name: str) -> list[dict[str, Any]]:
    """Validate and list the rows of a QA set (see the module docstring for the schema)."""
    rows = [dict(r) for r in data]
    if not rows:
        raise DataError(f"the {name} set is empty.")
    need = TRUTH_FIELDS if truth else TRUTH_FIELDS[:2]
    for i, row in enumerate(rows):
        missing = [k for k in need if k not in row]
        if missing:
            raise DataError(f"{name} row {i} lacks {missing}; rows need {list(need)}, has {sorted(row)}.")
        if truth:
            pert = row["perturbed_answers"]
            if isinstance(pert, str) or not isinstance(pert, Sequence) or len(pert) == 0:
                raise DataError(
                    f"{name} row {i}: perturbed_answers must be a non-empty list of strings, got {pert!r}."
                )
    return rows


def answer_logprobs(
    model: torch.nn.Module,
    tokenizer: Any,
    questions: Sequence[str],
    answers: Sequence[str],
    *,
    qa_format: QAFormat | None = None,
    batch_size: int = 16,
    device: torch.device | str | None = None,
) -> list[np.ndarray]:
    """Per-token ``log p(answer token | question, previous answer tokens)`` for each pair (float64)."""
    if len(questions) != len(answers):
        raise DataError(f"{len(questions)} questions but {len(answers)} answers.")
    qa_format = qa_format or QAFormat()
    encoded = [qa_format.encode(tokenizer, q, a) for q, a in zip(questions, answers, strict=True)]
    return token_logprobs(
        model,
        [e[0] for e in encoded],
        [e[1] for e in encoded],
        batch_size=batch_size,
        pad_token_id=pad_token_id(tokenizer),
        device=device,
    )


def perplexity(token_lps: Iterable[np.ndarray]) -> float:
    """Token-weighted perplexity ``exp(-sum_i sum_t log p / sum_i n_i)``."""
    arrays = [np.asarray(t, np.float64).reshape(-1) for t in token_lps]
    count = sum(a.size for a in arrays)
    if count == 0:
        raise DataError("perplexity of zero tokens is undefined.")
    return float(np.exp(-sum(a.sum() for a in arrays) / count))


def mean_logprob(token_lps: Iterable[np.ndarray]) -> np.ndarray:
    """Per-example mean token log-prob, i.e. ``log P(a|q)^(1/|a|)``."""
    return np.array([np.mean(t) for t in token_lps], dtype=np.float64)


def truth_ratio_from_logprobs(
    paraphrased: np.ndarray, perturbed: Sequence[np.ndarray], *, perturbed_mean: str = "arithmetic"
) -> np.ndarray:
    """Truth ratios from length-normalised log-probs.

    Args:
        paraphrased: ``[N]`` values ``log P(a_para|q)^(1/|a_para|)``.
        perturbed: per row, the values ``log P(a_pert_j|q)^(1/|a_pert_j|)`` over j.
        perturbed_mean: ``"arithmetic"`` (TOFU paper) or ``"geometric"`` (TOFU code, open-unlearning).

    Returns:
        ``R = mean_j P_pert_j / P_para`` per row, computed in log space.
    """
    paraphrased = np.asarray(paraphrased, np.float64).reshape(-1)
    if len(perturbed) != paraphrased.size:
        raise DataError(f"{paraphrased.size} paraphrased values but {len(perturbed)} perturbed rows.")
    if perturbed_mean == "arithmetic":
        log_pert = np.array([logsumexp(p) - np.log(len(p)) for p in perturbed])
    elif perturbed_mean == "geometric":
        log_pert = np.array([np.mean(p) for p in perturbed])
    else:
        raise ConfigError(f"perturbed_mean must be 'arithmetic' or 'geometric', got {perturbed_mean!r}.")
    return np.exp(log_pert - paraphrased)


def forget_quality(truth_ratios: np.ndarray, oracle_truth_ratios: np.ndarray) -> tuple[float, float]:
    """``(p-value, statistic)`` of ``scipy.stats.ks_2samp`` between the two samples of truth ratios."""
    a, b = np.asarray(truth_ratios, np.float64), np.asarray(oracle_truth_ratios, np.float64)
    if a.size == 0 or b.size == 0:
        raise DataError("forget quality needs truth ratios of both models.")
    from scipy.stats import ks_2samp  # scipy.stats takes seconds to import: only when needed

    res = ks_2samp(a, b)
    return float(res.pvalue), float(res.statistic)


def harmonic_mean(values: Iterable[float]) -> float:
    """Harmonic mean; 0 if any value is 0 (a model that fails one utility test has no utility)."""
    v = np.asarray(list(values), np.float64)
    if v.size == 0 or np.any(v < 0):
        raise DataError(f"harmonic mean needs non-negative values, got {v.tolist()}.")
    return 0.0 if np.any(v == 0) else float(v.size / np.sum(1.0 / v))


@dataclass
class QAScores:
    """One model's log-probs on one QA set: per-token answer log-probs, and the truth-ratio inputs."""

    answer: list[np.ndarray]
    paraphrased: np.ndarray | None = None  # [N] mean log-prob of the paraphrased answer
    perturbed: list[np.ndarray] | None = None  # per row: mean log-prob of each perturbed answer

    def truth_ratios(self, perturbed_mean: str = "arithmetic") -> np.ndarray:
        if self.paraphrased is None or self.perturbed is None:
            raise DataError("no paraphrased/perturbed answers were scored for this set.")
        return truth_ratio_from_logprobs(self.paraphrased, self.perturbed, perturbed_mean=perturbed_mean)


def score_qa(
    model: torch.nn.Module,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    *,
    truth: bool = True,
    qa_format: QAFormat | None = None,
    batch_size: int = 16,
    device: torch.device | str | None = None,
) -> QAScores:
    """Score the answers (and, with ``truth``, the paraphrased and perturbed answers) of every row in one
    batched pass."""
    questions, answers, owner = [], [], []
    for i, row in enumerate(rows):
        cands = [row["answer"]]
        if truth:
            cands += [row["paraphrased_answer"], *row["perturbed_answers"]]
        for j, a in enumerate(cands):
            questions.append(row["question"])
            answers.append(a)
            owner.append((i, j))
    lps = answer_logprobs(
        model, tokenizer, questions, answers, qa_format=qa_format, batch_size=batch_size, device=device
    )
    per_row: list[list[np.ndarray]] = [[] for _ in rows]
    for (i, _), lp in zip(owner, lps, strict=True):
        per_row[i].append(lp)
    scores = QAScores(answer=[r[0] for r in per_row])
    if truth:
        scores.paraphrased = np.array([np.mean(r[1]) for r in per_row])
        scores.perturbed = [mean_logprob(r[2:]) for r in per_row]
    return scores


@dataclass
class LMReference:
    """The retrained model's scores and metrics, computed once and reused for each method."""

    metrics: dict[str, float | None]
    forget_truth_ratios: np.ndarray
    model: torch.nn.Module | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def _set_metrics(
    model, tokenizer, rows, prefix, *, qa_format, batch_size, rouge, max_new_tokens, perturbed_mean, device
) -> tuple[dict[str, float], QAScores, np.ndarray]:
    scores = score_qa(model, tokenizer, rows, qa_format=qa_format, batch_size=batch_size, device=device)
    tr = scores.truth_ratios(perturbed_mean)
    out = {
        f"{prefix}_Q_A_Prob": float(np.mean(np.exp(mean_logprob(scores.answer)))),
        f"{prefix}_ppl": perplexity(scores.answer),
        f"{prefix}_loss": float(-np.mean(mean_logprob(scores.answer))),
    }
    if prefix == "forget":
        out["forget_truth_ratio"] = float(np.mean(np.minimum(tr, 1.0 / tr)))
    else:
        out["retain_Truth_Ratio"] = float(np.mean(np.maximum(0.0, 1.0 - tr)))
    if rouge:
        texts = generate_answers(
            model,
            tokenizer,
            [r["question"] for r in rows],
            qa_format=qa_format,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            device=device,
        )
        out[f"{prefix}_Q_A_ROUGE"] = float(
            np.mean([rouge_l_recall(t, r["answer"]) for t, r in zip(texts, rows, strict=True)])
        )
    return out, scores, tr


def _finite(arrays: Iterable[np.ndarray]) -> bool:
    return all(bool(np.all(np.isfinite(a))) for a in arrays)


def _own_metrics(model, tokenizer, forget_rows, retain_rows, holdout_rows, *, mink_k, **kw):
    forget_m, forget_s, forget_tr = _set_metrics(model, tokenizer, forget_rows, "forget", **kw)
    retain_m, _, _ = _set_metrics(model, tokenizer, retain_rows, "retain", **kw)
    out = {**forget_m, **retain_m}
    utility = [retain_m["retain_Q_A_Prob"], retain_m["retain_Truth_Ratio"]]
    if "retain_Q_A_ROUGE" in retain_m:
        utility.insert(1, retain_m["retain_Q_A_ROUGE"])
    out["model_utility"] = harmonic_mean(utility)
    out["mia_loss"] = out["mia_min_k"] = None
    if holdout_rows is not None:
        hold = score_qa(
            model,
            tokenizer,
            holdout_rows,
            truth=False,
            qa_format=kw["qa_format"],
            batch_size=kw["batch_size"],
            device=kw["device"],
        )
        if _finite(forget_s.answer) and _finite(hold.answer):  # a diverged model: None, not an error
            out["mia_loss"] = loss_mia_auc(-mean_logprob(forget_s.answer), -mean_logprob(hold.answer))
            out["mia_min_k"] = min_k_mia_auc(forget_s.answer, hold.answer, k=mink_k)
    return out, forget_tr


def lm_reference(
    oracle: torch.nn.Module,
    tokenizer: Any,
    *,
    forget: Any,
    retain: Any,
    holdout: Any = None,
    qa_format: QAFormat | None = None,
    batch_size: int = 16,
    rouge: bool = True,
    max_new_tokens: int = 32,
    mink_k: float = 0.4,
    perturbed_mean: str = "arithmetic",
    device: torch.device | str | None = None,
) -> LMReference:
    """Evaluate the retrained model once; pass the result as ``oracle=`` to :func:`evaluate_lm`."""
    settings = dict(
        qa_format=qa_format or QAFormat(),
        batch_size=batch_size,
        rouge=rouge,
        max_new_tokens=max_new_tokens,
        perturbed_mean=perturbed_mean,
        device=device,
        mink_k=mink_k,
    )
    metrics, tr = _own_metrics(
        oracle,
        tokenizer,
        rows_of(forget, truth=True, name="forget"),
        rows_of(retain, truth=True, name="retain"),
        None if holdout is None else rows_of(holdout, truth=False, name="holdout"),
        **settings,
    )
    return LMReference(metrics=metrics, forget_truth_ratios=tr, model=oracle, settings=settings)


def evaluate_lm(
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    forget: Any,
    retain: Any,
    oracle: torch.nn.Module | LMReference,
    original: torch.nn.Module | None = None,
    holdout: Any = None,
    qa_format: QAFormat | None = None,
    batch_size: int = 16,
    rouge: bool = True,
    max_new_tokens: int = 32,
    mink_k: float = 0.4,
    perturbed_mean: str = "arithmetic",
    device: torch.device | str | None = None,
) -> dict[str, float | None]:
    """TOFU-style metrics of an unlearned LM against the retrained ``oracle`` (see the module docstring).

    Args:
        model: the unlearned causal LM (forward takes ``input_ids``, ``attention_mask``; returns logits).
        tokenizer: HF-style tokenizer (``__call__`` -> ``input_ids``, ``decode``, ``eos_token_id``).
        forget, retain: QA rows with paraphrased and perturbed answers.
        oracle: the retrained model, or an :class:`LMReference` from :func:`lm_reference` (built with the
            same settings).
        original: the model before unlearning, for ``update_norm``.
        holdout: QA rows never trained on, for the membership-inference metrics (skipped when None).
        qa_format: prompt/answer encoding (must match the fine-tuning format).
        batch_size: sequences per forward pass.
        rouge: generate greedy answers and compute ROUGE-L recall (the slowest part).
        max_new_tokens: generation length for ROUGE.
        mink_k: Min-K% fraction.
        perturbed_mean: ``"arithmetic"`` or ``"geometric"`` mean over perturbed answers in the truth ratio.
        device: where to run; default: the model's device.

    Returns:
        Flat dict: ``forget_quality``, ``forget_ks_statistic``, ``model_utility``,
        ``{forget,retain}_Q_A_Prob``, ``{forget,retain}_Q_A_ROUGE`` (with ``rouge``), ``forget_truth_ratio``,
        ``retain_Truth_Ratio``, ``{forget,retain}_ppl``, ``{forget,retain}_loss``, ``mia_loss``,
        ``mia_min_k``, ``privleak`` (None without holdout). Metrics undefined for a model with NaN/inf
        outputs are None (or NaN, written as null), ``oracle_<each of these own metrics>``,
        ``param_distance``, ``update_norm``.
    """
    settings = dict(
        qa_format=qa_format or QAFormat(),
        batch_size=batch_size,
        rouge=rouge,
        max_new_tokens=max_new_tokens,
        perturbed_mean=perturbed_mean,
        device=device,
        mink_k=mink_k,
    )
    if isinstance(oracle, LMReference):
        reference = oracle
        differ = [
            k
            for k in ("qa_format", "rouge", "max_new_tokens", "perturbed_mean", "mink_k")
            if reference.settings.get(k) != settings[k]
        ]
        if differ:
            raise ConfigError(
                f"the LMReference was built with other settings for {differ}; rebuild it with the same."
            )
    else:
        reference = lm_reference(oracle, tokenizer, forget=forget, retain=retain, holdout=holdout, **settings)
    out, tr = _own_metrics(
        model,
        tokenizer,
        rows_of(forget, truth=True, name="forget"),
        rows_of(retain, truth=True, name="retain"),
        None if holdout is None else rows_of(holdout, truth=False, name="holdout"),
        **settings,
    )
    if tr.size != reference.forget_truth_ratios.size:
        raise DataError(f"{tr.size} forget rows but the reference has {reference.forget_truth_ratios.size}.")
    out["forget_quality"] = out["forget_ks_statistic"] = None
    if _finite([tr, reference.forget_truth_ratios]):
        out["forget_quality"], out["forget_ks_statistic"] = forget_quality(tr, reference.forget_truth_ratios)
    ref_mink = reference.metrics.get("mia_min_k")
    out["privleak"] = (
        privleak(out["mia_min_k"], ref_mink) if out["mia_min_k"] is not None and ref_mink else None
    )
    out.update({f"oracle_{k}": v for k, v in reference.metrics.items()})
    out.update(parameter_metrics(model, reference.model, original))
    return out
