"""Batches as the rest of the package sees them: how many examples a work item holds, one row of a collated
batch, and plain dict batches of a ``datasets.Dataset``.

These sit in the data layer because every layer above reads batches: the cost counters (curvature oracles,
training loops), the per-example losses (stop rule, forgetting objectives), evaluation and the tasks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


class Pair(tuple):
    """Several batches in one work item (grad_diff's (forget, retain)): counted batch by batch."""


class Rows(tuple):
    """(batch, row indices) of one data set: counted as the batch's examples (indices are not examples)."""


def count_examples(item: Any) -> int:
    """Examples in a work item: a batch (tensor, dict of columns, tuple/list of tensors) or a tuple of batches
    (grad_diff's (forget, retain) pair; scrub's ("max" | "min", batch)); None and strings count 0."""
    if item is None or isinstance(item, str):
        return 0
    if isinstance(item, torch.Tensor):
        return int(item.shape[0]) if item.dim() > 0 else 1
    if isinstance(item, dict):
        for v in item.values():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                return int(v.shape[0])
            if isinstance(v, list):
                return len(v)
        return 1
    if isinstance(item, Rows):
        return count_examples(item[0])
    if isinstance(item, Pair):
        return sum(count_examples(x) for x in item)
    if isinstance(item, tuple | list) and item:
        if all(isinstance(x, torch.Tensor) for x in item):  # one batch given as (inputs, labels, ...)
            return count_examples(item[0])
        return sum(count_examples(x) for x in item)  # several batches
    return 1


def batch_row(batch: Any, i: int, n: int) -> Any:
    """Example ``i`` of a collated batch of ``n`` examples (tensors and lists of length n are sliced, keeping
    the batch dimension; anything else is shared by all rows)."""
    if isinstance(batch, torch.Tensor | list) and len(batch) == n:
        return batch[i : i + 1]
    if isinstance(batch, dict):
        return {k: batch_row(v, i, n) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(batch_row(v, i, n) for v in batch)
    return batch


def is_numeric_feature(feature: Any) -> bool:
    """True for a ``datasets`` feature that holds numbers (possibly nested in sequences), False for text."""
    import datasets

    if isinstance(feature, datasets.Value):
        return feature.dtype not in ("string", "large_string")
    inner = getattr(feature, "feature", None)
    return inner is not None and is_numeric_feature(inner)


def numeric_columns(dataset: Any) -> list[str]:
    """The numeric columns of a ``datasets.Dataset`` (all of them, in order)."""
    return [c for c, f in dataset.features.items() if is_numeric_feature(f)]


def torch_format(dataset: Any) -> Any:
    """The dataset with numeric columns as torch tensors (string columns removed); other data unchanged."""
    import datasets

    if isinstance(dataset, datasets.Dataset):
        return dataset.with_format("torch", columns=numeric_columns(dataset))
    return dataset


def iterate_batches(dataset: Any, batch_size: int, *, shuffle: bool, seed: int = 0) -> Iterator[dict]:
    """Dict batches of torch tensors from a ``datasets.Dataset`` (string columns dropped)."""
    ds = torch_format(dataset)
    n = len(ds)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    for i in range(0, n, batch_size):
        yield ds[order[i : i + batch_size].tolist()]
