"""Tokenise a user's rows for the loss their model was fine-tuned with.

Three layouts, chosen from which columns the job names:

- ``text``: plain text, causal LM; every token is a target (next-token loss over the whole row).
- ``prompt_response``: a prompt and a response, causal LM; only the response tokens are targets (the TOFU
  convention): ``input_ids = prompt_ids + response_ids (+ EOS)``, ``labels = -100`` on the prompt. The prompt
  is ``prompt_template.format(prompt=...)`` tokenised with the tokenizer's special tokens, the response
  ``response_prefix + response`` without them, so the response's tokens do not depend on the prompt. With
  ``chat=True`` the tokenizer's chat template renders ``[user: prompt]`` (with the generation prompt) and
  ``[user: prompt, assistant: response]``; the targets are the tokens after the first rendering.
- ``classification``: text and a label, sequence classification (``label`` column of class indices; string
  labels are mapped with the model's ``label2id``).

Rows longer than ``max_length`` are cut on the right; a prompt/response row whose response is cut away
entirely has no target and is rejected (DataError naming the row), since its loss would be undefined.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import datasets

from dist_unlearn.errors import ConfigError, DataError

Kind = Literal["text", "prompt_response", "classification"]
TASK_OF_KIND = {"text": "causal_lm", "prompt_response": "causal_lm", "classification": "classification"}


@dataclass(frozen=True)
class TextFormat:
    """Which columns hold what, and how rows become tokens (see the module docstring)."""

    kind: Kind
    text_column: str | None = None
    prompt_column: str | None = None
    response_column: str | None = None
    label_column: str | None = None
    max_length: int = 256
    chat: bool = False
    prompt_template: str = "{prompt}"
    response_prefix: str = " "
    add_eos: bool = True

    @property
    def task(self) -> str:
        """``"causal_lm"`` or ``"classification"``: the model head this layout trains."""
        return TASK_OF_KIND[self.kind]

    def columns(self) -> dict[str, str]:
        """``{config key: column}`` of the columns this layout reads."""
        keys = ("text_column", "prompt_column", "response_column", "label_column")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}

    @classmethod
    def infer(
        cls,
        *,
        text_column: str | None = None,
        prompt_column: str | None = None,
        response_column: str | None = None,
        label_column: str | None = None,
        **kw: Any,
    ) -> TextFormat:
        """The layout the given columns describe.

        Raises:
            ConfigError: a combination that names no layout (e.g. a prompt without a response).
        """
        if prompt_column is not None or response_column is not None:
            if prompt_column is None or response_column is None:
                raise ConfigError(
                    "give both prompt_column and response_column for prompt/response data (got "
                    f"prompt_column={prompt_column!r}, response_column={response_column!r})."
                )
            if text_column is not None or label_column is not None:
                raise ConfigError(
                    "prompt_column/response_column cannot be combined with text_column/label_column; "
                    "choose one layout: text, prompt + response, or text + label."
                )
            return cls("prompt_response", prompt_column=prompt_column, response_column=response_column, **kw)
        if text_column is None:
            raise ConfigError(
                "data needs text_column (plain text, or with label_column for classification) or "
                "prompt_column + response_column."
            )
        kind: Kind = "classification" if label_column is not None else "text"
        return cls(kind, text_column=text_column, label_column=label_column, **kw)


def _ids(enc: Any) -> list[int]:
    ids = enc["input_ids"] if isinstance(enc, Mapping) or hasattr(enc, "keys") else enc
    return [int(i) for i in ids]


def _prompt_response(tokenizer: Any, fmt: TextFormat, prompt: str, response: str) -> tuple[list[int], int]:
    if fmt.chat:
        user = [{"role": "user", "content": str(prompt)}]
        head = _ids(tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True))
        full = _ids(
            tokenizer.apply_chat_template(
                [*user, {"role": "assistant", "content": str(response)}], tokenize=True
            )
        )
        if full[: len(head)] != head:
            raise DataError(
                "the chat template renders the prompt differently inside the conversation, so the response "
                "tokens cannot be located; use chat: false with prompt_template."
            )
        return full, len(head)
    head = _ids(tokenizer(fmt.prompt_template.format(prompt=prompt)))
    tail = _ids(tokenizer(fmt.response_prefix + str(response), add_special_tokens=False))
    if fmt.add_eos and tokenizer.eos_token_id is not None:
        tail.append(int(tokenizer.eos_token_id))
    return head + tail, len(head)


def label_ids(values: list[Any], label2id: Mapping[str, int] | None, num_labels: int | None) -> list[int]:
    """Class indices of a label column: ints checked against ``num_labels``, strings mapped by ``label2id``.

    Raises:
        DataError: an unknown label name or an index outside ``0 .. num_labels - 1``.
    """
    out = []
    for i, v in enumerate(values):
        if isinstance(v, str) and not v.lstrip("-").isdigit():
            if not label2id or v not in label2id:
                known = sorted(label2id or {})
                raise DataError(
                    f"row {i}: label {v!r} is not one of the model's labels {known} (config.label2id)."
                )
            v = label2id[v]
        try:
            k = int(v)
        except (TypeError, ValueError):
            raise DataError(f"row {i}: label {v!r} is neither a class index nor a label name.") from None
        if k < 0 or (num_labels is not None and k >= num_labels):
            raise DataError(f"row {i}: label {k} is outside the model's classes 0..{(num_labels or 1) - 1}.")
        out.append(k)
    return out


def tokenize_rows(
    ds: datasets.Dataset,
    tokenizer: Any,
    fmt: TextFormat,
    *,
    label2id: Mapping[str, int] | None = None,
    num_labels: int | None = None,
    what: str = "data",
) -> datasets.Dataset:
    """Token rows for the loss: ``input_ids``, ``attention_mask`` and ``labels`` (causal LM, -100 = no
    target) or ``label`` (classification). Rows keep their lengths; batch them with
    :func:`dist_unlearn.data.pad_collate`.

    Raises:
        ConfigError: ``chat=True`` with a tokenizer that has no chat template.
        DataError: an empty text, a row without targets after truncation, bad labels.
    """
    if fmt.chat and not getattr(tokenizer, "chat_template", None):
        raise ConfigError("data.chat is true but the tokenizer has no chat template; set chat: false.")
    L = int(fmt.max_length)
    cols: dict[str, list] = {"input_ids": [], "attention_mask": []}
    plain = ds.with_format(None)
    if fmt.kind == "prompt_response":
        cols["labels"] = []
        for i, (p, r) in enumerate(zip(plain[fmt.prompt_column], plain[fmt.response_column], strict=True)):
            ids, start = _prompt_response(tokenizer, fmt, p, r)
            ids = ids[:L]
            if start >= len(ids):
                raise DataError(
                    f"{what} row {i}: the prompt alone has {start} tokens, so max_length={L} leaves no "
                    "response token to score; raise data.max_length."
                )
            cols["input_ids"].append(ids)
            cols["attention_mask"].append([1] * len(ids))
            cols["labels"].append([-100] * start + ids[start:])
    else:
        for i, text in enumerate(plain[fmt.text_column]):
            if text is None or not str(text).strip():
                raise DataError(f"{what} row {i}: column {fmt.text_column!r} is empty.")
            ids = _ids(tokenizer(str(text), truncation=True, max_length=L))
            if fmt.kind == "text" and len(ids) < 2:
                raise DataError(f"{what} row {i}: text {str(text)!r} has fewer than 2 tokens (no target).")
            cols["input_ids"].append(ids)
            cols["attention_mask"].append([1] * len(ids))
        if fmt.kind == "classification":
            cols["label"] = label_ids(list(plain[fmt.label_column]), label2id, num_labels)
    return datasets.Dataset.from_dict(cols)
