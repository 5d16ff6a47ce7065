"""Resolve a :class:`ForgetSpec` against a dataset: validated retain / forget parts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np

from dist_unlearn.data.convert import as_dataset
from dist_unlearn.data.spec import ForgetSpec, _plain
from dist_unlearn.errors import DataError


@dataclass
class RetainForget:
    """The two parts of a dataset; unpacks as ``retain, forget = split_forget(...)``.

    Attributes:
        retain: rows kept (``datasets.Dataset``), in the original order.
        forget: rows to unlearn (``datasets.Dataset``), in the original order.
        retain_indices: row positions of ``retain`` in the input dataset.
        forget_indices: row positions of ``forget`` in the input dataset.
    """

    retain: datasets.Dataset
    forget: datasets.Dataset
    retain_indices: list[int]
    forget_indices: list[int]

    def __iter__(self) -> Iterator[datasets.Dataset]:
        yield self.retain
        yield self.forget


def _short(values: list[Any], n: int = 10) -> str:
    head = ", ".join(repr(v) for v in values[:n])
    return f"[{head}{', ...' if len(values) > n else ''}] ({len(values)} in all)"


def _column(ds: datasets.Dataset, name: str) -> list[Any]:
    col = ds.with_format(None)[name]
    return [_plain(v) for v in col]


def _match_ids(wanted: tuple[Any, ...], present: list[Any], where: str) -> list[int]:
    dup = sorted((k for k, c in Counter(wanted).items() if c > 1), key=repr)
    if dup:
        raise DataError(f"the forget ids contain duplicates: {_short(dup)}; list each id once.")
    dup_present = sorted((k for k, c in Counter(present).items() if c > 1), key=repr)
    if dup_present:
        raise DataError(f"the {where} has duplicate ids {_short(dup_present)}; ids must be unique.")
    pos = {v: i for i, v in enumerate(present)}
    # ids read from a text file are strings: compare them with the column's type (int ids, say)
    if present and not isinstance(present[0], str):
        as_type = type(present[0])
        try:
            wanted = tuple(as_type(w) if isinstance(w, str) else w for w in wanted)
        except (TypeError, ValueError):
            pass
    absent = [w for w in wanted if w not in pos]
    if absent:
        raise DataError(f"forget ids {_short(absent)} are absent from the {where}.")
    return sorted(pos[w] for w in wanted)


def split_forget(
    dataset: Any, spec: ForgetSpec | dict, *, id_column: str = "id", label_column: str = "label"
) -> RetainForget:
    """Split ``dataset`` into retain and forget parts following ``spec``.

    Ids are matched against ``id_column``; a dataset without that column is addressed by row position
    (0 .. n-1). ``fraction`` forgets ``round(fraction * n)`` rows drawn without replacement with
    ``numpy.random.default_rng(seed)``.

    Args:
        dataset: ``datasets.Dataset``, torch ``Dataset``/``DataLoader``, list of rows (see
        :func:`as_dataset`).
        spec: a :class:`ForgetSpec` or a mapping for :meth:`ForgetSpec.from_dict`.
        id_column: the column holding example ids.
        label_column: the column compared with ``spec.label``.

    Returns:
        :class:`RetainForget` with both parts as ``datasets.Dataset``.

    Raises:
        DataError: ids absent or duplicated, empty forget set, forget set = whole dataset, label not present,
            missing ids file, missing label column.
    """
    if isinstance(spec, dict):
        spec = ForgetSpec.from_dict(spec)
    ds = as_dataset(dataset)
    n = len(ds)
    if n == 0:
        raise DataError("the dataset is empty (0 rows); nothing to split.")
    if spec.kind in ("ids", "ids_file"):
        wanted = spec.read_ids()
        if id_column in ds.column_names:
            forget_idx = _match_ids(wanted, _column(ds, id_column), f"dataset's {id_column!r} column")
        else:
            forget_idx = _match_ids(
                wanted, list(range(n)), f"dataset (no {id_column!r} column, ids = row positions 0..{n - 1})"
            )
    elif spec.kind == "label":
        if label_column not in ds.column_names:
            raise DataError(
                f"forget label={spec.label!r} needs a {label_column!r} column; the dataset has "
                f"{ds.column_names}."
            )
        labels = _column(ds, label_column)
        forget_idx = [i for i, v in enumerate(labels) if v == spec.label]
        if not forget_idx:
            present = sorted(set(labels), key=repr)
            raise DataError(
                f"forget label={spec.label!r} is not present in column {label_column!r}; labels "
                f"present: {_short(present)}."
            )
    else:
        k = int(round(spec.fraction * n))
        if k == 0:
            raise DataError(
                f"the forget set is empty: fraction={spec.fraction} of {n} rows rounds to 0 rows."
            )
        rng = np.random.default_rng(spec.seed)
        forget_idx = sorted(int(i) for i in rng.choice(n, size=k, replace=False))
    if not forget_idx:
        raise DataError(f"the forget set is empty for {spec!r}.")
    if len(forget_idx) == n:
        raise DataError(f"the forget set {spec!r} covers all {n} rows; nothing would be retained.")
    forget_set = set(forget_idx)
    retain_idx = [i for i in range(n) if i not in forget_set]
    return RetainForget(ds.select(retain_idx), ds.select(forget_idx), retain_idx, forget_idx)


def sample_rows(n: int, k: int, seed: int) -> list[int]:
    """At most ``k`` of ``n`` row numbers, sorted, drawn without replacement with ``seed`` (all rows when
    n <= k): the fixed samples of retained rows the job's evidence, its format check and the stop rule's
    retain guard read."""
    if n <= k:
        return list(range(n))
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n, size=k, replace=False))


def sample_of(data: Any, k: int, seed: int) -> Any:
    """A fixed, seeded sample of at most ``k`` rows of ``data`` (Dataset, DataLoader, datasets.Dataset)."""
    from torch.utils.data import DataLoader, Subset

    inner = data.dataset if isinstance(data, DataLoader) else data
    rows = sample_rows(len(inner), k, seed)
    return inner.select(rows) if hasattr(inner, "select") else Subset(inner, rows)
