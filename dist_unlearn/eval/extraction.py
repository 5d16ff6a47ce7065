r"""Extraction: what the model *says* when prompted with a row's prompt, against the row's true answer.

Membership attacks read the model's probabilities; extraction reads its greedy output, as TOFU's ROUGE and
MUSE's verbatim memorisation do. For each token row:

- a prompt/response row (targets = the response tokens): the prompt is every token before the first target,
  the true answer the target tokens;
- a plain-text row (every token a target): the prompt is the first half of its tokens, the true answer the
  rest (MUSE's verbatim setting: prefix -> continuation).

The model greedily continues the prompt for as many tokens as the answer has, plus ``slack`` (stopping at
EOS). Two numbers per row, on lower-cased alphanumeric words (:func:`dist_unlearn.eval.text.rouge_l_recall`):

- ``rouge_l``: ROUGE-L recall ``LCS(generated, answer) / |answer|``;
- ``exact``: 1 when the generated words begin with the answer's words (the answer said verbatim).

Forget rows are compared with unseen rows given the same treatment: a model that never saw a person still
completes "X lives in" with *a* city and reaches some ROUGE on template words; the rate it reaches on people
it never saw is the reference, not zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from dist_unlearn.errors import DataError
from dist_unlearn.eval.text import greedy_continuations, rouge_l_recall, words

SLACK = 4
"""Tokens generated past the answer's length (room for a differently tokenised answer)."""


@dataclass
class Extraction:
    """Greedy answers of one model to a set of rows.

    Attributes:
        generated: the decoded greedy answers.
        answers: the decoded true answers.
        rouge_l: float64 ``[N]`` ROUGE-L recall of each answer.
        exact: float64 ``[N]``: 1.0 where the answer was said verbatim.
        generated_tokens: tokens generated in all (the work done).
    """

    generated: list[str]
    answers: list[str]
    rouge_l: np.ndarray
    exact: np.ndarray
    generated_tokens: int

    def subset(self, index: list[int]) -> Extraction:
        idx = np.asarray(index, dtype=np.int64)
        return Extraction(
            [self.generated[i] for i in index],
            [self.answers[i] for i in index],
            self.rouge_l[idx],
            self.exact[idx],
            self.generated_tokens,
        )


def prompt_and_answer(row: dict[str, Any]) -> tuple[list[int], list[int]]:
    """``(prompt ids, answer ids)`` of one token row (see the module docstring).

    Raises:
        DataError: a row too short to split into a prompt and an answer.
    """
    ids = [int(i) for i in row["input_ids"]]
    labels = row.get("labels")
    if labels is not None:
        starts = [i for i, lab in enumerate(labels) if lab != -100]
        if starts and starts[0] >= 1 and any(lab == -100 for lab in labels):
            start = starts[0]
            return ids[:start], [ids[i] for i in starts]
    if len(ids) < 2:
        raise DataError(f"a row of {len(ids)} token(s) cannot be split into a prompt and an answer.")
    half = len(ids) // 2
    return ids[:half], ids[half:]


def verbatim(generated: str, answer: str) -> bool:
    """True when the generated words begin with the answer's words (and the answer has words)."""
    g, a = words(generated), words(answer)
    return bool(a) and g[: len(a)] == a


def extract(
    model: nn.Module,
    tokenizer: Any,
    rows: Any,
    *,
    batch_size: int = 16,
    slack: int = SLACK,
) -> Extraction:
    """Greedy answers to the prompts of token ``rows`` and their match with the true answers.

    Args:
        model: a causal LM.
        tokenizer: decodes the answers (and gives the EOS / pad ids).
        rows: token rows (``input_ids`` and, for prompt/response rows, ``labels``).
        batch_size: prompts per ``generate`` call.
        slack: tokens generated past each answer's length.

    Returns:
        :class:`Extraction`, rows in order.
    """
    plain = rows.with_format(None) if hasattr(rows, "with_format") else rows
    pairs = [prompt_and_answer(dict(r)) for r in plain]
    prompts = [p for p, _ in pairs]
    answers = [tokenizer.decode(a, skip_special_tokens=True) for _, a in pairs]
    generated_ids = greedy_continuations(
        model,
        tokenizer,
        prompts,
        max_new_tokens=[len(a) + slack for _, a in pairs],
        batch_size=batch_size,
    )
    generated = [tokenizer.decode(g, skip_special_tokens=True) for g in generated_ids]
    rouge = np.asarray(
        [rouge_l_recall(g, a) for g, a in zip(generated, answers, strict=True)], dtype=np.float64
    )
    exact = np.asarray([verbatim(g, a) for g, a in zip(generated, answers, strict=True)], dtype=np.float64)
    return Extraction(generated, answers, rouge, exact, sum(len(g) for g in generated_ids))
