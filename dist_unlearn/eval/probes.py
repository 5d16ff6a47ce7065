r"""Robustness probes: attacks that try to bring forgotten data back, each run on a *copy* of a model.

A model whose answers were only suppressed (small weight changes that hide the data) gives them back when
it is nudged; a model that never learned the data has nothing to give back. The probes here are the known
nudges, each capped in cost; the caller measures the probed copy with the same per-subject verdict and
reports how much of the forget-vs-unseen gap returned (:mod:`dist_unlearn.job.robustness`).

- **Relearning** (Hu et al., ICLR 2025): fine-tune the copy with Adam (``finetune`` of
  :mod:`dist_unlearn.methods.first_order`) on given rows: benign relearning on retained rows only (one epoch
  by default, capped in example passes); targeted relearning on half of each subject's rows.
- **Weight quantization** (Zhang et al., ICLR 2025: 4-bit quantization restored most of what unlearned
  LLMs had forgotten): round-to-nearest, symmetric, per output channel,

      s_o = max_i |W_{o,i}| / (2^(b-1) - 1),   W_q = s_o * clamp(round(W / s_o), -(2^(b-1) - 1), 2^(b-1) - 1),

  on every matrix of a linear layer (``nn.Linear``: rows are output channels; GPT-2's ``Conv1D``: columns).
  Embeddings (and an output head tied to them), norms and biases stay in full precision (the usual
  weight-only quantization). A LoRA adapter
  is merged into its base first: the deployed weights are what gets quantized.

The model given is never modified: every probe works on ``copy.deepcopy(model)``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from dist_unlearn.errors import ConfigError


def _matrices(model: nn.Module) -> list[tuple[str, nn.Parameter, int]]:
    """``(name, weight, output-channel axis)`` of every linear layer's weight matrix, except an output head
    tied to the embeddings (it is the embedding table)."""
    embeddings = {m.weight.data_ptr() for m in model.modules() if isinstance(m, nn.Embedding)}
    out = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.data_ptr() in embeddings:
            continue
        if isinstance(module, nn.Linear):
            out.append((name, weight, 0))
        elif type(module).__name__ == "Conv1D":  # transformers' GPT-2 layer: weight [in, out]
            out.append((name, weight, 1))
    return out


def quantize_weight(weight: torch.Tensor, bits: int, axis: int) -> torch.Tensor:
    """Round-to-nearest symmetric quantization of a matrix, one scale per slice along ``axis`` (the
    module docstring's formula); returns the de-quantized matrix in the weight's dtype."""
    if not 2 <= bits <= 16:
        raise ConfigError(f"quantization bits must be between 2 and 16, got {bits!r}.")
    w = weight.detach().double()
    qmax = 2 ** (bits - 1) - 1
    reduce = 1 - axis
    scale = w.abs().amax(dim=reduce, keepdim=True) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (torch.clamp(torch.round(w / scale), -qmax, qmax) * scale).to(weight.dtype)


def deployable_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``; a peft model is merged into its base (the weights that get deployed)."""
    twin = copy.deepcopy(model)
    if hasattr(twin, "merge_and_unload"):
        twin = twin.merge_and_unload()
    return twin.eval()


@torch.no_grad()
def quantized_copy(model: nn.Module, bits: int) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` with every linear weight matrix quantized to ``bits`` bits (module docstring).

    Returns:
        ``(copy, record)``; the record has ``bits``, the number of matrices and weights quantized and the
        relative change ``|W_q - W| / |W|`` over them.
    """
    twin = deployable_copy(model)
    mats = _matrices(twin)
    if not mats:
        raise ConfigError("weight quantization found no linear layer (nn.Linear / Conv1D) in the model.")
    diff = norm = 0.0
    count = 0
    for _, weight, axis in mats:
        q = quantize_weight(weight, bits, axis)
        diff += float((q.double() - weight.double()).pow(2).sum())
        norm += float(weight.double().pow(2).sum())
        count += weight.numel()
        weight.copy_(q)
    return twin, {
        "bits": bits,
        "matrices": len(mats),
        "weights": count,
        "relative_change": (diff / norm) ** 0.5 if norm > 0 else 0.0,
    }


def relearned_copy(
    model: nn.Module,
    rows: Any,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    collate_fn: Any,
    max_passes: float | None = None,
    loss_fn: Any = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` fine-tuned on ``rows`` with Adam (the registry's ``finetune``).

    Args:
        model: the model (not modified).
        rows: the token rows to fine-tune on.
        epochs: passes over ``rows``.
        lr: Adam learning rate.
        batch_size: rows per step.
        seed: shuffling seed.
        collate_fn: the rows' collate function.
        max_passes: cost cap in example passes (None: no cap).
        loss_fn: ``loss_fn(model, batch)`` (None: the transformers model's default loss).

    Returns:
        ``(copy, record)``; the record has ``rows``, ``epochs``, ``lr``, ``steps``, ``stop_reason`` and
        ``cost`` (the fine-tune's :class:`~dist_unlearn.cost.CostCounter` dict).
    """
    import dist_unlearn

    twin = copy.deepcopy(model)
    opts: dict[str, Any] = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed}
    opts["collate_fn"] = collate_fn
    if max_passes is not None:
        opts["max_example_passes"] = float(max_passes)
    res = dist_unlearn.unlearn(twin, loss_fn, rows, None, method="finetune", **opts)
    stats = dict(res.stats)
    return res.model.eval(), {
        "rows": len(rows),
        "epochs": epochs,
        "lr": lr,
        "steps": stats.get("num_steps"),
        "stop_reason": stats.get("stop_reason"),
        "cost": stats.get("cost"),
    }
