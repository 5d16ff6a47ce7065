"""Batched forward passes: class probabilities, per-example losses, per-token log-probabilities.

Every metric in :mod:`dist_unlearn.eval` starts from these arrays, so the models are run once per data set
and the maths works on NumPy float64 arrays.

Classification data are torch ``Dataset`` s, ``DataLoader`` s, ``datasets.Dataset`` s or lists of rows. A row
(or collated batch) is either a tuple ``(inputs, label)`` or a dict with a label under ``labels`` / ``label``
/ ``y``; the remaining tensor entries are the model inputs (see :func:`default_logits`). Anything else:
pass ``predict_fn(model, batch) -> logits`` (for example the ``outputs`` method of a loss object of
:mod:`dist_unlearn.models`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dist_unlearn.data.device import model_device, to_device
from dist_unlearn.errors import DataError, ModelError

LABEL_KEYS = ("labels", "label", "y")
# Inputs of a plain nn.Module, tried in this order when a dict batch has several tensor entries.
INPUT_KEYS = ("x", "inputs", "input", "pixel_values", "input_ids", "features")

PredictFn = Callable[[torch.nn.Module, Any], Any]


@dataclass
class Predictions:
    """Outputs of a classifier on one data set, in the data set's order.

    Attributes:
        probs: softmax probabilities, float64, shape ``[N, C]``.
        labels: integer labels ``[N]``, or None when the data carry none.
        losses: per-example cross-entropy ``-log p(label | x)`` in float64 ``[N]``, or None without labels.
    """

    probs: np.ndarray
    labels: np.ndarray | None
    losses: np.ndarray | None

    def __len__(self) -> int:
        return int(self.probs.shape[0])


def iterate_batches(data: Any, batch_size: int, *, collate_fn: Callable | None = None) -> Iterator[Any]:
    """Yield batches of ``data`` in order (no shuffling).

    Args:
        data: a ``DataLoader`` (used as is, its own batch size), a ``datasets.Dataset`` (read in torch
            format), a torch ``Dataset`` or a list of rows.
        batch_size: rows per batch when ``data`` is not already a ``DataLoader``.
        collate_fn: optional collate function for the ``DataLoader`` built here.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if isinstance(data, torch.utils.data.DataLoader):
        yield from data
        return
    if hasattr(data, "with_format") and hasattr(data, "column_names"):  # datasets.Dataset
        data = data.with_format("torch")
    loader = torch.utils.data.DataLoader(
        data, batch_size=batch_size, shuffle=False, collate_fn=collate_fn or tolerant_collate
    )
    yield from loader


def tolerant_collate(rows: list[Any]) -> Any:
    """``default_collate``, except that a dict entry it cannot stack (ragged lists, lists of strings) is
    kept as the plain list of the rows' values."""
    from torch.utils.data import default_collate

    if rows and isinstance(rows[0], dict):
        out = {}
        for key in rows[0]:
            values = [r[key] for r in rows]
            try:
                out[key] = default_collate(values)
            except (RuntimeError, TypeError):
                out[key] = values
        return out
    return default_collate(rows)


def _forward_parameters(model: torch.nn.Module) -> set[str] | None:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


def split_batch(batch: Any) -> tuple[Any, torch.Tensor | None]:
    """Split a batch into (model inputs, labels or None); see the module docstring for accepted layouts."""
    if isinstance(batch, list | tuple):
        if len(batch) == 2:
            return batch[0], torch.as_tensor(batch[1])
        if len(batch) == 1:
            return batch[0], None
        raise DataError(
            f"a tuple batch must be (inputs, labels) or (inputs,), got {len(batch)} entries; "
            "pass predict_fn(model, batch) -> logits for other layouts."
        )
    if isinstance(batch, dict):
        label_key = next((k for k in LABEL_KEYS if k in batch), None)
        labels = torch.as_tensor(batch[label_key]) if label_key is not None else None
        inputs = {k: v for k, v in batch.items() if k != label_key and isinstance(v, torch.Tensor)}
        return inputs, labels
    return batch, None


def default_logits(model: torch.nn.Module, inputs: Any) -> torch.Tensor:
    """Run ``model`` on ``inputs`` (from :func:`split_batch`) and return the logits tensor.

    HF models get the dict as keyword arguments (entries the forward does not accept, like ``id``, are
    dropped); a plain module gets the tensor under the first of ``x, inputs, input, pixel_values,
    input_ids, features`` present, or the only tensor of the dict.
    """
    if isinstance(inputs, dict):
        if hasattr(model, "config") and hasattr(model, "forward"):
            accepted = _forward_parameters(model)
            if accepted is None and hasattr(model, "get_base_model"):  # peft wrappers take **kwargs
                accepted = _forward_parameters(model.get_base_model())
            kwargs = {k: v for k, v in inputs.items() if accepted is None or k in accepted}
            kwargs.pop("id", None)
            out = model(**kwargs)
        else:
            key = next((k for k in INPUT_KEYS if k in inputs), None)
            if key is None and len(inputs) == 1:
                key = next(iter(inputs))
            if key is None:
                raise DataError(
                    f"cannot tell which batch entry is the model input among {sorted(inputs)}; expected one "
                    f"of {list(INPUT_KEYS)} or a single tensor. Pass predict_fn(model, batch) -> logits."
                )
            out = model(inputs[key])
    else:
        out = model(inputs)
    return logits_of(out)


def logits_of(out: Any) -> torch.Tensor:
    """Logits of a model output: a tensor, an object with ``.logits``, or a tuple starting with one."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, list | tuple) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ModelError(f"model output of type {type(out).__name__} has no logits tensor.")


class _EvalMode:
    """Put a model in eval mode under no_grad; restore its training flag afterwards."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __enter__(self) -> torch.nn.Module:
        self.was_training = self.model.training
        self.model.eval()
        self.no_grad = torch.no_grad()
        self.no_grad.__enter__()
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.no_grad.__exit__(*exc)
        self.model.train(self.was_training)


def predict(
    model: torch.nn.Module,
    data: Any,
    *,
    batch_size: int = 256,
    predict_fn: PredictFn | None = None,
    collate_fn: Callable | None = None,
    device: torch.device | str | None = None,
) -> Predictions:
    """Class probabilities, labels and per-example cross-entropy of ``model`` on ``data``.

    The softmax and the loss ``-log softmax(z)[y]`` are computed in float64 from the logits, so tiny
    differences between two models are not lost to rounding.

    Args:
        model: a classifier returning logits ``[B, C]`` (tensor, ``.logits`` or tuple).
        data: see :func:`iterate_batches`.
        batch_size: rows per forward pass.
        predict_fn: ``predict_fn(model, batch) -> logits`` on the raw batch (moved to the model's device);
            labels are still read from the batch (see :func:`split_batch`).
        collate_fn: collate function when a ``DataLoader`` is built here.
        device: where to run; default: the model's device.

    Returns:
        :class:`Predictions`.
    """
    device = torch.device(device) if device is not None else model_device(model)
    probs, labels, losses = [], [], []
    with _EvalMode(model):
        for batch in iterate_batches(data, batch_size, collate_fn=collate_fn):
            batch = to_device(batch, device)
            inputs, y = split_batch(batch)
            logits = (
                logits_of(predict_fn(model, batch))
                if predict_fn is not None
                else default_logits(model, inputs)
            )
            if logits.ndim != 2:
                raise ModelError(
                    f"classifier logits must have shape [batch, classes], got {tuple(logits.shape)}."
                )
            logp = F.log_softmax(logits.detach().to(torch.float64), dim=-1)
            probs.append(logp.exp().cpu().numpy())
            if y is not None:
                y = y.to(logp.device).long().reshape(-1)
                if y.numel() != logp.shape[0]:
                    raise DataError(f"{y.numel()} labels for {logp.shape[0]} predictions in a batch.")
                if int(y.min()) < 0 or int(y.max()) >= logp.shape[1]:
                    raise DataError(
                        f"label out of range [0, {logp.shape[1]}): min {int(y.min())}, max {int(y.max())}."
                    )
                labels.append(y.cpu().numpy())
                losses.append((-logp.gather(1, y[:, None])[:, 0]).cpu().numpy())
    if not probs:
        raise DataError("cannot evaluate on an empty data set (no batches).")
    has_labels = len(labels) == len(probs)
    return Predictions(
        probs=np.concatenate(probs),
        labels=np.concatenate(labels) if has_labels else None,
        losses=np.concatenate(losses) if has_labels else None,
    )


def token_logprobs(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    target_starts: Sequence[int],
    *,
    batch_size: int = 16,
    pad_token_id: int = 0,
    device: torch.device | str | None = None,
) -> list[np.ndarray]:
    """Log-probabilities a causal LM gives each target token of each sequence.

    For sequence ``t_0..t_{n-1}`` with targets starting at ``s`` (``1 <= s < n``), returns
    ``[log p(t_i | t_<i) for i in s..n-1]`` as float64 (``z_t - logsumexp(z)``, in float32 or the
    logits' float64).
    Sequences are batched by length and right-padded with ``pad_token_id`` under an attention mask, so
    positions are unaffected.

    Args:
        model: a causal LM whose forward takes ``input_ids`` and ``attention_mask`` and returns logits
            ``[B, T, V]``.
        sequences: token ids, one list per example.
        target_starts: index of the first scored token of each sequence.
        batch_size: sequences per forward pass.
        pad_token_id: id used for padding (masked out).
        device: where to run; default: the model's device.

    Returns:
        One float64 array per sequence, of length ``len(seq) - start``.
    """
    if len(sequences) != len(target_starts):
        raise DataError(f"{len(sequences)} sequences but {len(target_starts)} target starts.")
    for i, (seq, s) in enumerate(zip(sequences, target_starts, strict=True)):
        if not 1 <= s < len(seq):
            raise DataError(
                f"sequence {i} has {len(seq)} tokens and targets starting at {s}; need 1 <= start < length "
                "(at least one context token and one target token)."
            )
    limit = _max_positions(model)
    if limit is not None:
        longest = max((len(s) for s in sequences), default=0)
        if longest > limit:
            raise DataError(f"a sequence has {longest} tokens, more than the model's {limit} positions.")
    device = torch.device(device) if device is not None else model_device(model)
    out: list[np.ndarray | None] = [None] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # similar lengths: less padding
    with _EvalMode(model):
        for lo in range(0, len(order), batch_size):
            index = order[lo : lo + batch_size]
            chunk = [sequences[i] for i in index]
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), int(pad_token_id), dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, seq in enumerate(chunk):
                ids[r, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
                mask[r, : len(seq)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = logits_of(model(input_ids=ids, attention_mask=mask))[:, :-1]
            if logits.dtype != torch.float64:
                logits = logits.float()
            # log p = z_target - logsumexp(z): no [B, T, V] float64 copy of the logits
            target = logits.gather(2, ids[:, 1:, None])[..., 0].double()
            picked = (target - torch.logsumexp(logits, dim=-1).double()).cpu().numpy()
            for r, (i, seq) in enumerate(zip(index, chunk, strict=True)):
                out[i] = picked[r, target_starts[i] - 1 : len(seq) - 1].copy()
    return out


def _max_positions(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def concat(values: Iterable[np.ndarray]) -> np.ndarray:
    """Concatenate 1-D arrays (empty input -> empty float64 array)."""
    values = list(values)
    return np.concatenate(values) if values else np.zeros(0)
