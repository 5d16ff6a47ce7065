"""Index-addressed access to the retain examples, so every loss/gradient/HVP is an exact mean over a sample.

The oracle never iterates a user's DataLoader directly: it reads the loader's dataset by index, in a fixed
order, so results do not depend on shuffling and the last partial chunk is weighted by its true size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.data._utils.collate import default_collate

from dist_unlearn.data.device import to_device
from dist_unlearn.errors import DataError


class ExampleSource:
    """A map-style dataset plus a collate function, read in chunks by index.

    Args:
        data: torch ``Dataset``, ``DataLoader`` (its dataset and collate_fn are used) or ``datasets.Dataset``
            (read in torch format when no collate_fn is given).
        collate_fn: turns a list of rows into a batch; default: torch's ``default_collate``, or column
            slicing for a ``datasets.Dataset``.
        device: where batches are moved.
    """

    def __init__(self, data: Any, collate_fn: Callable | None = None, device: torch.device | None = None):
        self.default_batch_size: int | None = None
        if isinstance(data, DataLoader):
            self.default_batch_size = data.batch_size
            collate_fn = collate_fn or data.collate_fn
            data = data.dataset
        if isinstance(data, IterableDataset):
            raise DataError(
                "the oracle needs a map-style dataset (len and indexing); got an IterableDataset."
            )
        try:
            import datasets

            is_hf = isinstance(data, datasets.Dataset)
        except ImportError:  # pragma: no cover
            is_hf = False
        if is_hf and collate_fn is None and data.format["type"] != "torch":
            data = data.with_format("torch")  # note: datasets casts float columns to float32 by default
        try:
            n = len(data)
        except TypeError as e:
            raise DataError(
                f"cannot take len() of the data ({type(data).__name__}); give a map-style dataset."
            ) from e
        if n == 0:
            raise DataError("the retain data is empty (0 examples); the retain loss is undefined.")
        self.data, self.n, self.device = data, n, device
        self._slice = is_hf and collate_fn is None
        self.collate_fn = collate_fn or default_collate

    def batch(self, indices: Sequence[int]) -> Any:
        """The collated batch of the given example indices, on the device."""
        idx = [int(i) for i in indices]
        if self._slice:
            return to_device(self.data[idx], self.device)
        return to_device(self.collate_fn([self.data[i] for i in idx]), self.device)

    def chunks(self, indices: Sequence[int], chunk_size: int) -> Iterator[tuple[Any, float]]:
        """Yield ``(batch, weight)`` with weight = len(chunk) / len(indices), so sum_w mean_chunk =
        mean_all."""
        total = len(indices)
        for start in range(0, total, chunk_size):
            part = indices[start : start + chunk_size]
            yield self.batch(part), len(part) / total
