"""Placing batches and finding models on devices: one definition shared by the oracles, methods and eval."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def to_device(batch: Any, device: torch.device | None) -> Any:
    """Move every tensor of a (nested) batch to ``device``; ``None`` leaves the batch where it is.

    Mappings (dicts, ``BatchEncoding``) come back as plain dicts, lists and tuples keep their type, anything
    else is returned unchanged.
    """
    if device is None:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-free module)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
