"""Who each row is about: the subject column of a job, checked before anything is loaded.

A deletion request names subjects (people, authors, documents); the audit judges each of them
(:mod:`dist_unlearn.eval.subject_verdict`) and the forgetting stop rule may too (``forget_subjects`` /
``calibration_subjects`` of :class:`dist_unlearn.options.UnlearnOptions`). The column is, in order:

1. ``data.subject_column`` when given;
2. the column of a ``forget: {where: {column: ...}}`` selector (its first key);
3. ``holdout_split.group_column`` (the rows kept together when the holdout is split);
4. none: each forget row is its own subject (``"row <id>"``) and the holdout's rows are independent.

The holdout must carry the same column (the unseen subjects calibrate how alike one subject's rows are, and
the targeted relearning probe needs whole subjects); a missing column fails early with
:class:`~dist_unlearn.errors.DataError` naming where the column came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dist_unlearn.errors import DataError


@dataclass
class Subjects:
    """The subject of every forget and holdout row.

    Attributes:
        column: the subject column (None: each forget row its own subject).
        source: where the column came from (the config key, or ``"each forget row"``).
        forget: the subject of each forget row, in the forget selection's order.
        holdout: the subject of each holdout row, in the holdout table's order (None: no column).
    """

    column: str | None
    source: str
    forget: list[Any]
    holdout: list[Any] | None

    def of_holdout(self, rows: list[int]) -> list[Any] | None:
        """The subjects of the holdout rows ``rows`` (None without a column)."""
        return None if self.holdout is None else [self.holdout[i] for i in rows]

    def record(self) -> dict[str, Any]:
        """What the audit keeps: the column, its source and the forget subjects (in first-seen order)."""
        return {
            "column": self.column,
            "source": self.source,
            "forget_subjects": list(dict.fromkeys(self.forget)),
            "holdout_subjects": len(set(self.holdout)) if self.holdout is not None else None,
        }


def subject_column(cfg: Any) -> tuple[str | None, str]:
    """``(column, source)`` of a job config (module docstring)."""
    if cfg.data.subject_column is not None:
        return cfg.data.subject_column, "data.subject_column"
    if cfg.forget.where:
        return next(iter(cfg.forget.where)), "forget.where"
    if cfg.holdout_split.group_column is not None:
        return cfg.holdout_split.group_column, "holdout_split.group_column"
    return None, "each forget row"


def _values(table: Any, column: str, what: str, source: str) -> list[Any]:
    columns = list(table.column_names)
    if column not in columns:
        raise DataError(
            f"the subject column {column!r} (from {source}) is not a column of the {what} (columns: "
            f"{columns}); add it there or set data.subject_column to the column naming who each row is "
            "about."
        )
    values = [v.item() if hasattr(v, "item") else v for v in table.with_format(None)[column]]
    missing = [i for i, v in enumerate(values) if v is None or (isinstance(v, str) and not v.strip())]
    if missing:
        raise DataError(
            f"{len(missing)} {what} row(s) have no value in the subject column {column!r} (first: row "
            f"{missing[0]}); every row must name its subject."
        )
    return values


def resolve_subjects(cfg: Any, train: Any, selection: Any, holdout: Any | None) -> Subjects:
    """The subjects of a job's forget rows and holdout rows (module docstring).

    Raises:
        DataError: the subject column is missing from the data or the holdout, or a row has no value in it.
    """
    column, source = subject_column(cfg)
    if column is None:
        return Subjects(None, source, [f"row {i}" for i in selection.ids], None)
    values = _values(train, column, f"data {str(cfg.data.path)!r}", source)
    forget = [values[i] for i in selection.indices]
    held = _values(holdout, column, f"holdout {str(cfg.holdout)!r}", source) if holdout is not None else None
    return Subjects(column, source, forget, held)


def subject_options(job: Any, given: dict[str, Any]) -> dict[str, Any]:
    """``forget_subjects`` (and ``calibration_subjects`` with a stop rule) for the job's method, when the
    method reads them and the job.yaml did not set them."""
    from dist_unlearn.options import reads

    out: dict[str, Any] = {}
    if not reads(job.cfg.method.name, "forget_subjects"):
        return out
    if "forget_subjects" not in given:
        out["forget_subjects"] = list(job.subjects.forget)
    calibration = job.subjects.of_holdout(job.split.calibration) if job.split is not None else None
    if (
        job.rows["calibration"] is not None
        and calibration is not None
        and "calibration_subjects" not in given
    ):
        out["calibration_subjects"] = calibration
    return out
