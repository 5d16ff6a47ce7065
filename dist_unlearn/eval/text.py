"""Question/answer encoding, greedy answer generation and ROUGE-L recall for the LM evaluation.

The same :class:`QAFormat` must be used to fine-tune the model and to evaluate it: the answer is scored (and
generated) as the continuation of ``template.format(question=...)``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dist_unlearn.errors import DataError
from dist_unlearn.eval.predictions import _EvalMode, _max_positions, logits_of, model_device


@dataclass(frozen=True)
class QAFormat:
    """How a (question, answer) pair becomes tokens.

    ``ids = tokenizer(template.format(question=q)).input_ids`` (with the tokenizer's special tokens, e.g. a
    BOS) followed by ``tokenizer(answer_prefix + a, add_special_tokens=False).input_ids`` and, with
    ``add_eos``, the EOS id. Only the answer tokens are scored. The two parts are tokenized separately so
    the answer's tokens do not depend on the prompt.

    Attributes:
        template: prompt with a ``{question}`` field.
        answer_prefix: text put before the answer (a space suits GPT-2's byte-level BPE).
        add_eos: append ``tokenizer.eos_token_id`` to the answer (and score it).
    """

    template: str = "Question: {question}\nAnswer:"
    answer_prefix: str = " "
    add_eos: bool = False

    def prompt_ids(self, tokenizer: Any, question: str) -> list[int]:
        """Token ids of the prompt for ``question``."""
        return list(tokenizer(self.template.format(question=question))["input_ids"])

    def answer_ids(self, tokenizer: Any, answer: str) -> list[int]:
        """Token ids of the answer (prefix included, EOS appended with ``add_eos``)."""
        ids = list(tokenizer(self.answer_prefix + answer, add_special_tokens=False)["input_ids"])
        if self.add_eos:
            if tokenizer.eos_token_id is None:
                raise DataError("QAFormat(add_eos=True) but the tokenizer has no eos_token_id.")
            ids.append(int(tokenizer.eos_token_id))
        return ids

    def encode(self, tokenizer: Any, question: str, answer: str) -> tuple[list[int], int]:
        """``(input_ids, answer_start)``: the full sequence and the index of its first answer token.

        For training, labels are ``input_ids`` with the first ``answer_start`` positions set to -100.
        """
        prompt, ans = self.prompt_ids(tokenizer, question), self.answer_ids(tokenizer, answer)
        if not prompt:
            raise DataError(
                f"the prompt of question {question!r} encodes to no tokens; use a non-empty template."
            )
        if not ans:
            raise DataError(f"answer {answer!r} (question {question!r}) encodes to no tokens.")
        return prompt + ans, len(prompt)


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS id, else 0 (padding is always masked)."""
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if value is not None:
            return int(value)
    return 0


_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric words of ``text`` (the units of ROUGE-L here)."""
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (O(len(a) len(b)) dynamic programme)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall ``LCS(pred, ref) / |ref|`` on lower-cased alphanumeric words (no stemming).

    TOFU reports ``rouge_score``'s ROUGE-L recall with the Porter stemmer; without the stemmer the value
    is the same except where two words differ only by suffix.
    """
    ref = words(reference)
    if not ref:
        return 0.0
    return lcs_length(words(prediction), ref) / len(ref)


def generate_answers(
    model: torch.nn.Module,
    tokenizer: Any,
    questions: Sequence[str],
    *,
    qa_format: QAFormat | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    device: torch.device | str | None = None,
) -> list[str]:
    """Greedy-decode an answer to each question (the prompt is ``qa_format.template``); see
    :func:`greedy_continuations`."""
    qa_format = qa_format or QAFormat()
    prompts = [qa_format.prompt_ids(tokenizer, q) for q in questions]
    generated = greedy_continuations(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, device=device
    )
    return [tokenizer.decode(g, skip_special_tokens=True) for g in generated]


def greedy_continuations(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int | Sequence[int] = 32,
    batch_size: int = 16,
    device: torch.device | str | None = None,
) -> list[list[int]]:
    """Greedy continuation of each prompt (token ids), without the EOS that ends it.

    HF models use ``model.generate`` on left-padded batches; other modules a plain greedy loop, one prompt
    at a time. Generation stops at EOS or ``max_new_tokens`` (one number, or one per prompt: a batch
    generates its longest and each row is cut to its own), capped so the model's position limit is not
    exceeded.
    """
    device = torch.device(device) if device is not None else model_device(model)
    budgets = (
        [int(max_new_tokens)] * len(prompts)
        if isinstance(max_new_tokens, int)
        else [int(m) for m in max_new_tokens]
    )
    if len(budgets) != len(prompts):
        raise DataError(f"{len(prompts)} prompts but {len(budgets)} max_new_tokens values.")
    eos = getattr(tokenizer, "eos_token_id", None)
    pad = pad_token_id(tokenizer)
    limit = _max_positions(model)
    out: list[list[int]] = []
    with _EvalMode(model):
        for lo in range(0, len(prompts), batch_size):
            chunk = [list(p) for p in prompts[lo : lo + batch_size]]
            want = budgets[lo : lo + batch_size]
            width = max(len(p) for p in chunk)
            new = max(want) if limit is None else max(0, min(max(want), limit - width))
            if new == 0:
                out.extend([] for _ in chunk)
                continue
            if hasattr(model, "generate") and hasattr(model, "config"):
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for r, p in enumerate(chunk):
                    ids[r, width - len(p) :] = torch.as_tensor(p)
                    mask[r, width - len(p) :] = 1
                seqs = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=new,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=pad,
                    eos_token_id=eos,
                )
                generated = [seq[width:].tolist() for seq in seqs]
            else:
                generated = [_greedy(model, p, new, eos, device) for p in chunk]
            for g, budget in zip(generated, want, strict=True):
                if eos is not None and eos in g:
                    g = g[: g.index(eos)]
                out.append(g[:budget])
    return out


def _greedy(
    model: torch.nn.Module, prompt: list[int], steps: int, eos: int | None, device: torch.device
) -> list[int]:
    ids = list(prompt)
    for _ in range(steps):
        x = torch.as_tensor([ids], device=device)
        nxt = int(logits_of(model(input_ids=x, attention_mask=torch.ones_like(x)))[0, -1].argmax())
        ids.append(nxt)
        if nxt == eos:
            break
    return ids[len(prompt) :]
