"""Accept torch ``Dataset`` / ``DataLoader`` / ``datasets.Dataset`` (and plain lists/dicts) everywhere."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from dist_unlearn.errors import DataError


def _to_plain(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray) and x.ndim == 0:
        return x.item()  # a scalar column, not a list of one value
    return x


def _row_dict(row: Any, i: int) -> dict[str, Any]:
    if isinstance(row, Mapping):
        return {str(k): _to_plain(v) for k, v in row.items()}
    if isinstance(row, tuple | list):
        if len(row) == 2:
            return {"input": _to_plain(row[0]), "label": _to_plain(row[1])}
        return {f"x{j}": _to_plain(v) for j, v in enumerate(row)}
    if isinstance(row, torch.Tensor | np.ndarray):
        return {"input": _to_plain(row)}
    raise DataError(
        f"row {i} of the dataset is a {type(row).__name__}; rows must be dicts, (input, label) tuples "
        f"or tensors."
    )


def as_dataset(x: Any) -> datasets.Dataset:
    """Convert data to a ``datasets.Dataset`` (torch format for tensor columns).

    Accepted: ``datasets.Dataset`` (returned as is), a ``DataLoader`` (its dataset), a map-style torch
    ``Dataset`` whose items are dicts, ``(input, label)`` tuples (columns ``input``, ``label``), longer tuples
    (columns ``x0, x1, ...``) or tensors (column ``input``), a list of dict rows, or a dict of columns.

    Raises:
        DataError: for an iterable-style dataset, an empty dataset or rows of an unsupported type.
    """
    if isinstance(x, datasets.Dataset):
        return x
    if isinstance(x, DataLoader):
        return as_dataset(x.dataset)
    if isinstance(x, Mapping):
        return datasets.Dataset.from_dict(dict(x)).with_format("torch")
    if isinstance(x, IterableDataset):
        raise DataError("an IterableDataset cannot be split or indexed; give a map-style Dataset or a list.")
    if isinstance(x, Dataset | list | tuple):
        n = len(x)  # type: ignore[arg-type]
        if n == 0:
            raise DataError("the dataset is empty (0 rows).")
        rows = [_row_dict(x[i], i) for i in range(n)]
        return datasets.Dataset.from_list(rows).with_format("torch")
    raise DataError(
        f"cannot use a {type(x).__name__} as a dataset; give a datasets.Dataset, a torch Dataset or "
        f"DataLoader."
    )


def make_loader(
    data: Any,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    collate_fn: Callable | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A ``DataLoader`` over torch ``Dataset`` / ``DataLoader`` / ``datasets.Dataset``.

    A ``datasets.Dataset`` is read in torch format, so numeric columns come back as stacked tensors. A given
    ``DataLoader`` is rebuilt over its dataset (keeping its collate_fn unless one is passed). Shuffling uses a
    generator seeded with ``seed``, so the order is reproducible.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size={batch_size!r} must be a positive integer.")
    if isinstance(data, DataLoader):
        collate_fn = collate_fn or data.collate_fn
        data = data.dataset
    if isinstance(data, datasets.Dataset) and data.format["type"] != "torch":
        data = data.with_format("torch")
    gen = torch.Generator().manual_seed(int(seed)) if shuffle else None
    kwargs: dict[str, Any] = {"collate_fn": collate_fn} if collate_fn is not None else {}
    return DataLoader(
        data, batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=drop_last, **kwargs
    )


def pad_collate(pad_token_id: int = 0) -> Callable[[list], dict]:
    """A collate_fn for token rows of different lengths: right-pads to the longest row of the batch.

    ``input_ids`` are padded with ``pad_token_id``, ``attention_mask`` with 0 (created from the lengths when
    absent), ``labels`` with -100 (ignored by the losses); other keys go through torch's default_collate.
    """
    from torch.utils.data._utils.collate import default_collate

    def collate(rows: list[Mapping]) -> dict[str, Any]:
        seqs = [torch.as_tensor(r["input_ids"]) for r in rows]
        width = max(len(s) for s in seqs)
        out: dict[str, Any] = {}

        def pad(key: str, value: int, fallback: Callable[[int], torch.Tensor] | None = None) -> None:
            padded = []
            for r, s in zip(rows, seqs, strict=True):
                t = torch.as_tensor(r[key]) if key in r else fallback(len(s))
                padded.append(torch.cat([t, t.new_full((width - len(t),), value)]))
            out[key] = torch.stack(padded)

        pad("input_ids", pad_token_id)
        pad("attention_mask", 0, lambda n: torch.ones(n, dtype=torch.long))
        if "labels" in rows[0]:
            pad("labels", -100)
        rest = [k for k in rows[0] if k not in out]
        if rest:
            out.update(default_collate([{k: r[k] for k in rest} for r in rows]))
        return out

    return collate
