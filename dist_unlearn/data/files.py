"""A user's own data files: load them, address rows by id, select the rows to forget.

Formats (read with ``datasets``): ``.jsonl`` / ``.json`` (JSON lines or a JSON list of records), ``.csv``,
``.parquet``, or a folder written by ``datasets.Dataset.save_to_disk``. Rows are addressed by the values of
an id column (default ``"id"``), or by their row number (0 .. n-1) when the data has no such column.

The forget set is exactly one of:

- ``ids``: a list of ids;
- ``ids_file``: a text file with one id per line (``#`` comments allowed) or a JSON list;
- ``where``: ``{column: value}`` (or ``{column: [v1, v2]}``, any of them); several columns must all match.

Every check that protects the user raises :class:`~dist_unlearn.errors.DataError` naming the file, the value
and what is allowed: a missing, unreadable or unknown-format file, an absent column (listing those present),
forget ids absent from the data (how many, a few examples), an empty forget set, a forget set that is the
whole data set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from dist_unlearn.data.spec import ForgetSpec
from dist_unlearn.data.split import _column, _match_ids, _short
from dist_unlearn.errors import DataError

#: file suffix -> ``datasets`` builder
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def load_table(path: str | Path, *, what: str = "data") -> datasets.Dataset:
    """Load a data file or a ``save_to_disk`` folder as one ``datasets.Dataset`` (kept in memory).

    Args:
        path: ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file, or a ``save_to_disk`` folder (a
            ``DatasetDict`` folder is accepted when it has one split, or a ``train`` split).
        what: how the file is named in messages ("data", "holdout").

    Raises:
        DataError: the path is missing, of an unknown format, unreadable, or holds no rows.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} path {str(p)!r} does not exist.")
    if p.is_dir():
        ds = _load_saved(p, what)
    else:
        builder = FILE_FORMATS.get(p.suffix.lower())
        if builder is None:
            raise DataError(
                f"{what} file {str(p)!r} has an unknown format {p.suffix or '(no suffix)'!r}; allowed: "
                f"{', '.join(FILE_FORMATS)} files or a datasets.save_to_disk folder."
            )
        ds = _load_file(p, builder, what)
    if len(ds) == 0:
        raise DataError(f"{what} {str(p)!r} holds no rows.")
    return ds


def _load_file(p: Path, builder: str, what: str) -> datasets.Dataset:
    try:
        ds = datasets.load_dataset(builder, data_files=str(p), split="train", keep_in_memory=True)
    except Exception as e:  # datasets/pyarrow raise many types for a bad file; all mean "unreadable"
        first = str(e).splitlines()[0] if str(e) else ""
        raise DataError(
            f"{what} file {str(p)!r} could not be read as {builder} ({type(e).__name__}: {first[:300]})."
        ) from e
    return ds


def _load_saved(p: Path, what: str) -> datasets.Dataset:
    try:
        obj = datasets.load_from_disk(str(p), keep_in_memory=True)
    except Exception as e:
        raise DataError(
            f"{what} folder {str(p)!r} is not a datasets.save_to_disk folder ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); give a .jsonl/.json/.csv/.parquet file or such a "
            "folder."
        ) from e
    if isinstance(obj, datasets.DatasetDict):
        splits = list(obj)
        if len(splits) == 1:
            return obj[splits[0]]
        if "train" in obj:
            return obj["train"]
        raise DataError(
            f"{what} folder {str(p)!r} holds the splits {splits}; save the one to use on its own (or name "
            "it 'train')."
        )
    return obj


def require_columns(ds: datasets.Dataset, columns: Mapping[str, str | None], *, what: str = "data") -> None:
    """Raise DataError when a named column is absent, listing the columns the data has.

    Args:
        ds: the data.
        columns: ``{config key: column name}`` (None values are skipped), e.g. ``{"text_column": "text"}``.
        what: the data's name in the message.
    """
    for key, name in columns.items():
        if name is not None and name not in ds.column_names:
            raise DataError(
                f"{key}={name!r} is not a column of the {what}; its columns are {ds.column_names}."
            )


def row_ids(ds: datasets.Dataset, id_column: str) -> list[Any]:
    """The id of every row: the ``id_column`` values, or row numbers when the data has no such column."""
    if id_column in ds.column_names:
        return _column(ds, id_column)
    return list(range(len(ds)))


@dataclass(frozen=True)
class ForgetSelection:
    """Rows to forget, resolved against the data.

    Attributes:
        indices: row positions of the forget rows (sorted).
        ids: their ids (``id_column`` values, or row numbers), in the same order.
        selector: the selector as given (for the audit record).
        id_source: ``"column 'id'"`` or ``"row number"``: what the ids are.
    """

    indices: list[int]
    ids: list[Any]
    selector: dict[str, Any]
    id_source: str


def select_forget(
    ds: datasets.Dataset,
    *,
    ids: Sequence[Any] | None = None,
    ids_file: str | Path | None = None,
    where: Mapping[str, Any] | None = None,
    id_column: str = "id",
    what: str = "data",
) -> ForgetSelection:
    """Resolve a forget selector (exactly one of ``ids``, ``ids_file``, ``where``) against ``ds``.

    Raises:
        DataError: not exactly one selector; ids absent from the data or duplicated; a ``where`` column absent
            or matching no row; an empty forget set; a forget set covering every row.
    """
    given = {k: v for k, v in (("ids", ids), ("ids_file", ids_file), ("where", where)) if v is not None}
    if len(given) != 1:
        raise DataError(
            f"forget needs exactly one of ids, ids_file, where; got {', '.join(given) or 'none'}."
        )
    n = len(ds)
    present = row_ids(ds, id_column)
    has_column = id_column in ds.column_names
    source = f"column {id_column!r}" if has_column else "row number"
    where_txt = (
        f"{what}'s {id_column!r} column"
        if has_column
        else f"{what} (no {id_column!r} column, so ids are row numbers 0..{n - 1})"
    )
    if where is not None:
        idx = _match_where(ds, where, what)
        selector: dict[str, Any] = {"where": dict(where)}
    else:
        spec = ForgetSpec(ids=tuple(ids)) if ids is not None else ForgetSpec(ids_file=str(ids_file))
        wanted = spec.read_ids()  # empty list/file -> DataError
        idx = _match_ids(wanted, present, where_txt)
        selector = {"ids": list(spec.ids)} if ids is not None else {"ids_file": str(ids_file)}
    if not idx:
        raise DataError(f"the forget set is empty: {selector} selects no row of the {what}.")
    if len(idx) == n:
        raise DataError(
            f"the forget set {selector} covers all {n} rows of the {what}; nothing would be retained "
            "(unlearning needs rows to keep)."
        )
    return ForgetSelection(idx, [present[i] for i in idx], selector, source)


def _match_where(ds: datasets.Dataset, where: Mapping[str, Any], what: str) -> list[int]:
    if not isinstance(where, Mapping) or not where:
        raise DataError(f"forget where={where!r} must be a non-empty mapping {{column: value or [values]}}.")
    keep = [True] * len(ds)
    for col, value in where.items():
        if col not in ds.column_names:
            raise DataError(
                f"forget where column {col!r} is not a column of the {what}; its columns are "
                f"{ds.column_names}."
            )
        allowed = list(value) if isinstance(value, list | tuple | set) else [value]
        if not allowed:
            raise DataError(f"forget where {{{col!r}: []}} lists no value.")
        values = _column(ds, col)
        wanted = set(map(_key, allowed))
        hits = [_key(v) in wanted for v in values]
        if not any(hits):
            distinct = sorted({_key(v) for v in values}, key=repr)
            raise DataError(
                f"the forget set is empty: no row of the {what} has {col} in {allowed!r}; values present: "
                f"{_short(distinct, 8)}."
            )
        keep = [k and h for k, h in zip(keep, hits, strict=True)]
    return [i for i, k in enumerate(keep) if k]


def _key(v: Any) -> Any:
    """A hashable comparison key: lists become tuples."""
    return tuple(v) if isinstance(v, list) else v


def count_overlap(train: datasets.Dataset, holdout: datasets.Dataset, columns: Sequence[str]) -> int:
    """How many holdout rows equal a training row on ``columns`` (the content the model learns from).

    A holdout is meant to be data the model never saw; overlapping rows make the audit's forget-vs-holdout
    comparison too lenient, so the job warns with this count.
    """
    cols = [c for c in columns if c in train.column_names and c in holdout.column_names]
    if not cols:
        return 0
    seen = set(zip(*(map(_key, _column(train, c)) for c in cols), strict=True))
    return sum(1 for row in zip(*(map(_key, _column(holdout, c)) for c in cols), strict=True) if row in seen)
