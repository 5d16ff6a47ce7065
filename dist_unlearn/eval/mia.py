"""Membership-inference attacks scored by ROC AUC.

Convention (the same as open-unlearning's ``mia_*`` metrics): an attack gives every example a score, higher
meaning "more likely a training member"; the AUC is the probability that a random member outscores a
random non-member, ties counting one half:

    AUC = P(s_member > s_non) + 1/2 P(s_member = s_non)  (Mann-Whitney U / (n_m n_n)).

For unlearning the members are the forget set and the non-members data never trained on (test / holdout).
A model retrained without the forget set sits near 0.5; the closer an unlearned model's AUC is to the
retrained model's, the better.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dist_unlearn.errors import ConfigError, DataError


def _vector(x: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise DataError(f"{what} is empty: membership inference needs at least one example on each side.")
    if not np.all(np.isfinite(a)):
        raise DataError(f"{what} contains NaN or inf ({int(np.sum(~np.isfinite(a)))} of {a.size}).")
    return a


def auc_score(
    member_scores: Sequence[float] | np.ndarray, nonmember_scores: Sequence[float] | np.ndarray
) -> float:
    """ROC AUC of separating members from non-members by score (higher = member), via the rank statistic.

    Args:
        member_scores: attack scores of the members.
        nonmember_scores: attack scores of the non-members.

    Returns:
        ``(R_m - n_m (n_m + 1) / 2) / (n_m n_n)`` with ``R_m`` the sum of the members' mid-ranks in the
        pooled sample; equals ``sklearn.metrics.roc_auc_score`` with members labelled 1.
    """
    m = _vector(member_scores, "member_scores")
    n = _vector(nonmember_scores, "nonmember_scores")
    # mid-ranks of the pooled sample (1-based; tied values share the mean of their ranks)
    _, group, counts = np.unique(np.concatenate([m, n]), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[group]
    u = ranks[: m.size].sum() - m.size * (m.size + 1) / 2.0
    return float(u / (m.size * n.size))


def loss_mia_auc(
    member_losses: Sequence[float] | np.ndarray, nonmember_losses: Sequence[float] | np.ndarray
) -> float:
    """Loss attack (Yeom et al.): score = -loss, members being fitted better. open-unlearning ``mia_loss``."""
    return auc_score(-_vector(member_losses, "member_losses"), -_vector(nonmember_losses, "nonmember_losses"))


def lowest_mean(values: Sequence[float] | np.ndarray, k: float) -> float:
    """Mean of the ``max(1, floor(k n))`` lowest of ``n`` values (open-unlearning's ``int(len * k)``)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    return float(np.sort(v)[: max(1, int(v.size * k))].mean())


def min_k_scores(token_logprobs: Sequence[Sequence[float] | np.ndarray], k: float = 0.4) -> np.ndarray:
    """Min-K% Prob scores (Shi et al. 2024): mean of the lowest ``max(1, floor(k * n))`` token log-probs per
    text (:func:`lowest_mean`, as open-unlearning's ``mia_min_k``).

    Args:
        token_logprobs: per-example arrays of ``log p(t_i | t_<i)``.
        k: fraction of tokens kept, in (0, 1]. open-unlearning's TOFU default is 0.4.

    Returns:
        float64 array, one score per example (higher = more likely a member).
    """
    if not 0.0 < k <= 1.0:
        raise ConfigError(f"Min-K% fraction k must be in (0, 1], got {k!r}.")
    scores = np.empty(len(token_logprobs))
    for i, lp in enumerate(token_logprobs):
        lp = np.asarray(lp, dtype=np.float64).reshape(-1)
        if lp.size == 0:
            raise DataError(f"example {i} has no scored tokens for Min-K%.")
        scores[i] = lowest_mean(lp, k)
    return scores


def min_k_mia_auc(
    member_token_logprobs: Sequence[np.ndarray],
    nonmember_token_logprobs: Sequence[np.ndarray],
    k: float = 0.4,
) -> float:
    """Min-K% attack AUC (open-unlearning ``mia_min_k``)."""
    return auc_score(min_k_scores(member_token_logprobs, k), min_k_scores(nonmember_token_logprobs, k))


def privleak(auc: float, auc_reference: float) -> float:
    """MUSE PrivLeak in percent: ``(AUC - AUC_retrain) / AUC_retrain * 100`` (0 = no leak vs retraining)."""
    if auc_reference <= 0:
        raise DataError(f"reference AUC must be positive, got {auc_reference!r}.")
    return float((auc - auc_reference) / auc_reference * 100.0)
