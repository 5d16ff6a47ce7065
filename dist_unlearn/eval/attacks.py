r"""The membership attacks the field uses, per row, from one forward pass over token rows.

Every attack gives each row a *statistic* with open-unlearning's sign convention: lower = more likely a
training member (a loss-like number). The attack's AUC between forget rows (members) and unseen rows
(non-members) is ``P(s_forget < s_unseen) + 1/2 P(=)``: 1 when the forget rows look far more like members,
0.5 when they are indistinguishable (``mia_*`` in open-unlearning, :func:`attack_aucs`).

Causal LMs, over a row's target tokens ``t_1..t_n`` (``labels != -100``; every token after the first for
plain-text rows), with ``lp_i = log p(t_i | t_<i)``:

- ``loss`` (Yeom et al. 2018): ``-(1/n) sum_i lp_i``, the job's per-example training loss;
- ``zlib`` (Carlini et al. 2021): ``loss / len(zlib.compress(text))``, ``text`` the decoded target tokens
  (special tokens skipped), so that text which is simply easy to predict is not mistaken for a member;
- ``min_k`` (Min-K% Prob, Shi et al. 2024): ``-mean`` of the ``max(1, floor(k m))`` lowest ``lp_i`` over the
  first ``m = n - 1`` target tokens (the last target, the EOS of a prompt/response row, is left out as in
  open-unlearning; a row with one target keeps it), ``k = 0.4`` (open-unlearning's TOFU/MUSE setting);
- ``min_k_plus_plus`` (Min-K%++, Zhang et al. 2025): the same over the standardised log-probs
  ``z_i = (lp_i - mu_i) / sigma_i``, ``mu_i = E_{v ~ p(.|t_<i)} log p(v|t_<i)``,
  ``sigma_i^2 = E[log p(v|t_<i)^2] - mu_i^2`` (clamped at 1e-6) over the whole vocabulary.

Sequence classifiers, with ``p = softmax(f(x))`` and label ``y``:

- ``loss``: ``-log p_y`` (Yeom et al.);
- ``confidence``: ``1 - max_c p_c`` (Salem et al. 2019: members get confident predictions; label-free,
  so it differs from the loss on mislabelled rows);
- ``entropy``: ``-sum_c p_c log p_c`` (Salem et al. 2019, Song & Mittal 2021);

and whether ``argmax p == y`` (accuracy, reported next to the attacks).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dist_unlearn.data import make_loader, pad_collate
from dist_unlearn.data.device import model_device, to_device
from dist_unlearn.errors import ConfigError, DataError
from dist_unlearn.eval.mia import auc_score, lowest_mean

LM_ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus")
CLASSIFIER_ATTACKS = ("loss", "confidence", "entropy")
MIN_K = 0.4
"""open-unlearning's k of Min-K% and Min-K%++ (``configs/eval/*/mia_min_k*.yaml``)."""
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_SIGMA2_FLOOR = 1e-6


def attacks_for(task: str) -> tuple[str, ...]:
    """The attack names of a task (``"causal_lm"`` or ``"classification"``)."""
    return CLASSIFIER_ATTACKS if task == "classification" else LM_ATTACKS


@dataclass
class RowStats:
    """Attack statistics of one model on one set of rows, in the rows' order.

    Attributes:
        values: attack name -> float64 ``[N]`` statistics (lower = more member-like).
        correct: classifier only: 1.0 where the prediction equals the label.
    """

    values: dict[str, np.ndarray]
    correct: np.ndarray | None = None

    def __len__(self) -> int:
        return len(next(iter(self.values.values()))) if self.values else 0

    def subset(self, index: Sequence[int]) -> RowStats:
        """The statistics of the rows ``index`` (in that order)."""
        idx = np.asarray(index, dtype=np.int64)
        return RowStats(
            {k: v[idx] for k, v in self.values.items()},
            None if self.correct is None else self.correct[idx],
        )

    def to_dict(self) -> dict[str, list[float]]:
        out = {k: v.tolist() for k, v in self.values.items()}
        if self.correct is not None:
            out["correct"] = self.correct.tolist()
        return out


def _lm_batch(
    logits: torch.Tensor, batch: dict[str, torch.Tensor], tokenizer: Any, k: float
) -> dict[str, list[float]]:
    targets = (
        batch["labels"]
        if "labels" in batch
        else batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    )
    t = targets[:, 1:]
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    mask = t != -100
    lp = logp.gather(2, t.clamp_min(0)[..., None])[..., 0]
    p = logp.exp()
    mu = (p * logp).sum(-1)
    sigma2 = ((p * logp.square()).sum(-1) - mu.square()).clamp_min(_SIGMA2_FLOOR)
    z = (lp - mu) / sigma2.sqrt()
    out: dict[str, list[float]] = {name: [] for name in LM_ATTACKS}
    for r in range(t.shape[0]):
        m = mask[r]
        if not bool(m.any()):
            raise DataError("a row has no target token: its attack statistics are undefined.")
        lp_r = lp[r][m].double().cpu().numpy()
        z_r = z[r][m].double().cpu().numpy()
        loss = float(-lp_r.mean())
        head = slice(0, max(1, lp_r.size - 1))  # the last target (EOS) is left out of Min-K%
        out["loss"].append(loss)
        if tokenizer is not None:
            text = tokenizer.decode(t[r][m].tolist(), skip_special_tokens=True)
            out["zlib"].append(loss / len(zlib.compress(text.encode("utf-8"))))
        out["min_k"].append(-lowest_mean(lp_r[head], k))
        out["min_k_plus_plus"].append(-lowest_mean(z_r[head], k))
    return out


def _classifier_batch(logits: torch.Tensor, labels: torch.Tensor) -> tuple[dict[str, list[float]], list]:
    logp = F.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    y = labels.long()
    stats = {
        "loss": (-logp.gather(1, y[:, None])[:, 0]).tolist(),
        "confidence": (1.0 - p.max(-1).values).tolist(),
        "entropy": (-(p * logp).sum(-1)).tolist(),
    }
    return stats, (logits.argmax(-1) == y).double().tolist()


@torch.no_grad()
def row_statistics(
    model: nn.Module,
    rows: Any,
    task: str,
    *,
    tokenizer: Any = None,
    pad_id: int = 0,
    batch_size: int = 16,
    k: float = MIN_K,
    attacks: tuple[str, ...] | None = None,
) -> RowStats:
    """Every attack's statistic of each token row (see the module docstring), one forward pass per batch.

    Args:
        model: the model (run in eval mode, restored afterwards).
        rows: token rows (:func:`dist_unlearn.data.tokenize.tokenize_rows`).
        task: ``"causal_lm"`` or ``"classification"``.
        tokenizer: decodes the target tokens for ``zlib`` (causal LM; required there).
        pad_id: the padding token id.
        batch_size: rows per forward pass.
        k: the Min-K% fraction, in (0, 1].
        attacks: the attacks to keep (default: all of the task's, :func:`attacks_for`).

    Returns:
        :class:`RowStats` with those attacks.

    Raises:
        ConfigError: ``k`` outside (0, 1], or a causal LM without a tokenizer.
        DataError: a row without target tokens.
    """
    if not 0.0 < k <= 1.0:
        raise ConfigError(f"Min-K% fraction k must be in (0, 1], got {k!r}.")
    lm = task != "classification"
    names = attacks_for(task) if attacks is None else tuple(attacks)
    unknown = [n for n in names if n not in attacks_for(task)]
    if unknown:
        raise ConfigError(f"unknown {task} attack(s) {unknown}; known: {list(attacks_for(task))}.")
    if "zlib" in names and tokenizer is None:
        raise ConfigError("the zlib attack decodes the target tokens: pass the tokenizer.")
    values: dict[str, list[float]] = {n: [] for n in names}
    correct: list[float] = []
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        for batch in make_loader(rows, batch_size, collate_fn=pad_collate(pad_id)):
            batch = to_device(batch, device)
            out = model(**{key: batch[key] for key in _INPUTS if key in batch})
            logits = out.logits if hasattr(out, "logits") else out[0]
            if lm:
                got = _lm_batch(logits, batch, tokenizer, k)
            else:
                got, ok = _classifier_batch(logits, batch["label"])
                correct += ok
            for n in names:
                values[n] += got[n]
    finally:
        model.train(was_training)
    return RowStats(
        {n: np.asarray(v, dtype=np.float64) for n, v in values.items()},
        np.asarray(correct, dtype=np.float64) if not lm else None,
    )


def statistic_auc(forget: np.ndarray, unseen: np.ndarray) -> float | None:
    """Forget-vs-unseen AUC of one loss-like statistic (1 = forget rows look like members, 0.5 =
    indistinguishable); None when a side is empty or has non-finite values (a diverged model)."""
    f, u = np.asarray(forget, dtype=np.float64), np.asarray(unseen, dtype=np.float64)
    if not (f.size and u.size and np.all(np.isfinite(f)) and np.all(np.isfinite(u))):
        return None
    return auc_score(-f, -u)


def attack_aucs(forget: RowStats, unseen: RowStats) -> dict[str, float | None]:
    """:func:`statistic_auc` of every attack."""
    return {name: statistic_auc(f, unseen.values[name]) for name, f in forget.values.items()}
