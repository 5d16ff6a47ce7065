"""Catch a tokenizer that does not belong to the model before it produces out-of-range embedding lookups."""

from __future__ import annotations

from typing import Any

from torch import nn

from dist_unlearn.errors import ModelError
from dist_unlearn.models.losses import unwrap


def check_tokenizer(model: nn.Module, tokenizer: Any) -> None:
    """Raise ModelError when ``tokenizer`` can emit ids the model's input embedding does not have.

    Checks ``len(tokenizer)`` (vocabulary including added tokens) and the special-token ids against the number
    of rows of ``model.get_input_embeddings()`` (a model may have more rows than tokens: padding is fine).
    """
    base = unwrap(model)
    get_emb = getattr(base, "get_input_embeddings", None)
    emb = get_emb() if callable(get_emb) else None
    if emb is None or not hasattr(emb, "num_embeddings"):
        raise ModelError(f"{type(base).__name__} has no input embedding to check the tokenizer against.")
    rows = int(emb.num_embeddings)
    check_tokenizer_ids(tokenizer, rows, f"the model's input embedding has {rows} rows")


def check_tokenizer_ids(tokenizer: Any, rows: int, model_side: str, where: str = "") -> None:
    """Raise ModelError when ``tokenizer`` has more tokens than ``rows``, or a special-token id >= ``rows``.

    Args:
        rows: ids the model can look up (embedding rows, or the config's ``vocab_size``).
        model_side: the model's side of the message ("the model's vocab_size is 100").
        where: optional "the tokenizer in X and the model in Y do not belong together: " for the message.
    """
    size = len(tokenizer)
    if size > rows:
        raise ModelError(
            f"tokenizer/model mismatch: {where}the tokenizer has {size} tokens but {model_side} (ids >= "
            f"{rows} would be out of range). Use the tokenizer saved with the model, or resize the "
            "embeddings with model.resize_token_embeddings(len(tokenizer))."
        )
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id"):
        tid = getattr(tokenizer, name, None)
        if isinstance(tid, int) and tid >= rows:
            raise ModelError(
                f"tokenizer/model mismatch: {where}tokenizer {name}={tid} is out of range: {model_side}."
            )
