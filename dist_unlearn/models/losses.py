"""Per-task losses, computed by us in the logits dtype (HF's causal-LM loss upcasts logits to float32).

Each loss is callable as ``loss(model, batch) -> scalar`` (the mean over the batch's examples) and exposes
``outputs(model, batch)`` (the logits) and ``from_outputs(logits, batch)`` so that Gauss-Newton products
(``hvp="ggn"``) can split model and loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dist_unlearn.errors import DataError, ModelError

HF_INPUT_KEYS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "position_ids",
    "inputs_embeds",
    "pixel_values",
)
PLAIN_INPUT_KEYS = ("input", "inputs", "x", "pixel_values", "features")


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying transformers/plain model of a peft wrapper (the model itself otherwise)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def is_hf(model: nn.Module) -> bool:
    """True for transformers models (and peft wrappers of them)."""
    return hasattr(unwrap(model), "config") and hasattr(unwrap(model), "can_generate")


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, Mapping):
        logits = out.get("logits")
    if logits is None and isinstance(out, tuple | list):
        logits = out[0]
    if not isinstance(logits, torch.Tensor):
        raise ModelError(
            f"the model returned {type(out).__name__}; expected a tensor or an output with .logits."
        )
    return logits


def _hf_inputs(batch: Mapping) -> dict[str, Any]:
    inputs = {k: batch[k] for k in HF_INPUT_KEYS if k in batch}
    if not inputs:
        raise DataError(
            f"the batch has keys {sorted(batch)}; a transformers model needs one of {HF_INPUT_KEYS}."
        )
    return inputs


class ClassificationLoss:
    """Mean cross-entropy  (1/B) sum_i -log softmax(f(x_i))_{y_i}.

    Batches: dicts (HF models get the keys in ``HF_INPUT_KEYS``; plain modules get ``batch[input_key]``,
    default the first of ``PLAIN_INPUT_KEYS`` present; labels under ``label_key``, default "labels" or
    "label")
    or ``(inputs, labels)`` tuples.
    """

    def __init__(self, input_key: str | None = None, label_key: str | None = None):
        self.input_key, self.label_key = input_key, label_key

    def labels(self, batch: Any) -> torch.Tensor:
        if isinstance(batch, Mapping):
            keys = [self.label_key] if self.label_key else ["labels", "label"]
            for k in keys:
                if k in batch:
                    return batch[k]
            raise DataError(f"no label column {keys} in the batch (keys: {sorted(batch)}).")
        if isinstance(batch, tuple | list) and len(batch) >= 2:
            return batch[1]
        raise DataError(f"cannot find labels in a batch of type {type(batch).__name__}.")

    def outputs(self, model: nn.Module, batch: Any) -> torch.Tensor:
        if isinstance(batch, Mapping):
            if is_hf(model) and self.input_key is None:
                return _logits(model(**_hf_inputs(batch)))
            keys = [self.input_key] if self.input_key else list(PLAIN_INPUT_KEYS)
            for k in keys:
                if k in batch:
                    return _logits(model(batch[k]))
            raise DataError(f"no input column {keys} in the batch (keys: {sorted(batch)}).")
        if isinstance(batch, tuple | list):
            return _logits(model(batch[0]))
        return _logits(model(batch))

    def from_outputs(self, logits: torch.Tensor, batch: Any) -> torch.Tensor:
        return F.cross_entropy(logits, self.labels(batch).to(logits.device).long())

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self.from_outputs(self.outputs(model, batch), batch)


class CausalLMLoss:
    """Next-token cross-entropy, per-example mean over target tokens, then mean over examples.

    loss = (1/B) sum_i (1/T_i) sum_{t in targets_i} -log p(x_{i,t} | x_{i,<t});  targets are ``labels`` (with
    -100 = ignore) when the batch has them, else ``input_ids`` where ``attention_mask`` is 1. Averaging per
    example first makes the chunked mean over a dataset exact whatever the chunking. Computed in the logits
    dtype (so a float64 model gives a float64 loss, unlike HF's built-in loss).
    """

    def outputs(self, model: nn.Module, batch: Mapping) -> torch.Tensor:
        return _logits(model(**_hf_inputs(batch)))

    @staticmethod
    def targets(batch: Mapping) -> torch.Tensor:
        if "labels" in batch:
            return batch["labels"]
        labels = batch["input_ids"].clone()
        if "attention_mask" in batch:
            labels = labels.masked_fill(batch["attention_mask"] == 0, -100)
        return labels

    def from_outputs(self, logits: torch.Tensor, batch: Mapping) -> torch.Tensor:
        labels = self.targets(batch).to(logits.device)[:, 1:]
        shifted = logits[:, :-1, :]
        tok = F.cross_entropy(
            shifted.reshape(-1, shifted.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="none"
        ).view(labels.shape)
        mask = (labels != -100).to(tok.dtype)
        per_example = (tok * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return per_example.mean()

    def __call__(self, model: nn.Module, batch: Mapping) -> torch.Tensor:
        return self.from_outputs(self.outputs(model, batch), batch)


def task_of(model: nn.Module) -> str | None:
    """ "classification", "causal_lm" or None, from the transformers class name / config architectures."""
    base = unwrap(model)
    names = [type(base).__name__] + list(getattr(getattr(base, "config", None), "architectures", None) or [])
    for n in names:
        if "SequenceClassification" in n:
            return "classification"
        if "CausalLM" in n or "LMHeadModel" in n:
            return "causal_lm"
    return None


def loss_for_task(task: str) -> ClassificationLoss | CausalLMLoss:
    """The loss object of a task name."""
    from dist_unlearn.errors import reject_unknown

    if task == "classification":
        return ClassificationLoss()
    if task == "causal_lm":
        return CausalLMLoss()
    reject_unknown("task", [task], ("classification", "causal_lm"))
    raise AssertionError  # unreachable


def default_loss_fn(model: nn.Module) -> ClassificationLoss | CausalLMLoss:
    """The loss of a transformers model's task (sequence classification or causal LM).

    Raises:
        ModelError: for plain modules or other heads; pass ``loss_fn`` explicitly then.
    """
    task = task_of(model)
    if task is None:
        raise ModelError(
            f"cannot infer a loss for a {type(unwrap(model)).__name__}: only transformers "
            f"*ForSequenceClassification "
            "and *ForCausalLM models have a default; pass loss_fn(model, batch) -> scalar."
        )
    return loss_for_task(task)


def per_example_losses(loss_fn: Any, model: nn.Module, batch: Any) -> torch.Tensor:
    """Differentiable loss of each example of ``batch``, shape ``(n,)``.

    ``loss_fn.per_example(model, batch)`` when the loss has it; else, for losses with ``outputs`` and
    ``from_outputs`` (the losses of this module), one forward pass and ``from_outputs`` per row; else one call
    of ``loss_fn`` per row (a plain ``loss_fn(model, batch) -> batch mean``).
    """
    from dist_unlearn.data.batches import batch_row, count_examples

    if isinstance(batch, list) and batch and all(isinstance(t, torch.Tensor) for t in batch):
        batch = tuple(batch)  # default_collate of (x, y) rows gives a list of columns
    per_example = getattr(loss_fn, "per_example", None)
    if callable(per_example):
        return per_example(model, batch)
    outputs, from_outputs = getattr(loss_fn, "outputs", None), getattr(loss_fn, "from_outputs", None)
    if callable(outputs) and callable(from_outputs):
        logits = outputs(model, batch)
        n = logits.shape[0]
        return torch.stack([from_outputs(logits[i : i + 1], batch_row(batch, i, n)) for i in range(n)])
    n = count_examples(batch)
    return torch.stack([loss_fn(model, batch_row(batch, i, n)).reshape(()) for i in range(n)])
