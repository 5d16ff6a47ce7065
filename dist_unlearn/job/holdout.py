"""The job's holdout split: calibration rows for the forgetting stop rule, audit rows for the verdict.

The stop rule (:mod:`dist_unlearn.stopping`) ends the run when the forget rows' losses look like those of
unseen data; if the verdict were then decided on the same unseen rows it would grade the rule on its own
evidence (and be biased towards "forgotten"). So the holdout is split once, seeded, before anything runs:
a ``calibration_fraction`` share goes to the stop rule, the rest is the audit's reference. With
``group_column`` whole groups (e.g. all records of one person) go to one side, so the two parts do not
share a person whose records are alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dist_unlearn.errors import DataError


@dataclass
class HoldoutParts:
    """Row numbers (into the holdout table) of the two parts, and the record the audit keeps."""

    calibration: list[int]
    audit: list[int]
    record: dict[str, Any] = field(default_factory=dict)


def split_holdout(
    table: Any,
    *,
    fraction: float,
    group_column: str | None,
    id_column: str,
    seed: int,
    stop_rule: bool,
    why_not: str = "",
) -> HoldoutParts:
    """Split a holdout table (a ``datasets.Dataset``) into calibration and audit rows.

    Args:
        table: the holdout rows.
        fraction: share of rows (or groups) for calibration, in [0, 1).
        group_column: keep the rows of one value of this column together (None: split rows).
        id_column: the column whose values the audit lists (row numbers when absent).
        seed: the split's seed.
        stop_rule: False when the method cannot use a stop rule: every row then goes to the audit.
        why_not: the reason recorded when ``stop_rule`` is False.

    Returns:
        :class:`HoldoutParts`; ``record`` has ``calibration_ids``, ``audit_ids``, ``fraction``,
        ``group_column``, ``seed``, ``stop_rule`` (bool) and ``why``.

    Raises:
        DataError: ``group_column`` is not a column of the holdout.
    """
    n = len(table)
    columns = list(getattr(table, "column_names", []) or [])
    if group_column is not None and group_column not in columns:
        raise DataError(
            f"holdout_split.group_column={group_column!r} is not a holdout column (columns: {columns})."
        )
    ids = list(table[id_column]) if id_column in columns else list(range(n))
    cal: list[int] = []
    reason = why_not
    if stop_rule and fraction > 0:
        groups = list(table[group_column]) if group_column else list(range(n))
        keys = sorted(set(groups), key=str)
        k = math.floor(fraction * len(keys))
        if k >= 1 and len(keys) - k >= 1:
            rng = np.random.default_rng(seed)
            chosen = {keys[int(i)] for i in rng.choice(len(keys), size=k, replace=False)}
            cal = [i for i, g in enumerate(groups) if g in chosen]
            unit = f"{group_column!r} groups" if group_column else "rows"
            reason = (
                f"{k} of {len(keys)} {unit} ({len(cal)} rows) calibrate the forgetting stop rule (the run "
                f"stops when the forget rows look like these); the verdict is decided on the other "
                f"{n - len(cal)} rows only, so it is not judged on the data used to stop."
            )
        else:
            reason = (
                f"the holdout has too few {'groups' if group_column else 'rows'} ({len(keys)}) to split with "
                f"calibration_fraction={fraction}: no stop rule, every row is audit evidence."
            )
    elif stop_rule:
        reason = "holdout_split.calibration_fraction is 0: no stop rule, every holdout row is audit evidence."
    chosen_rows = set(cal)
    audit = [i for i in range(n) if i not in chosen_rows]
    record = {
        "stop_rule": bool(cal),
        "why": reason,
        "fraction": fraction,
        "group_column": group_column,
        "seed": seed,
        "calibration_rows": len(cal),
        "audit_rows": len(audit),
        "calibration_ids": [_plain(ids[i]) for i in cal],
        "audit_ids": [_plain(ids[i]) for i in audit],
    }
    return HoldoutParts(cal, audit, record)


def _plain(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else x


def split_for_job(cfg: Any, holdout: Any) -> HoldoutParts | None:
    """The split of a job's holdout (None without one): calibration rows for every method that takes the
    forgetting stop rule (the curvature methods and the first-order forgetting methods; not retraining)."""
    if holdout is None:
        return None
    from dist_unlearn.options import reads

    stop_rule = reads(cfg.method.name, "calibration")
    why = f"{cfg.method.name} takes no stop rule: every holdout row is audit evidence."
    hs = cfg.holdout_split
    return split_holdout(
        holdout,
        fraction=hs.calibration_fraction,
        group_column=hs.group_column,
        id_column=cfg.data.id_column,
        seed=cfg.seed,
        stop_rule=stop_rule,
        why_not=why,
    )
