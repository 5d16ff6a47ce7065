"""The job's cheap checks: each fails in seconds, before any weights load and before anything is written.

The model folder itself is checked by :func:`dist_unlearn.job.model.inspect_model`; here: the data layout
against the model kind, the training table and its forget selection, the holdout (columns, rows shared with
training) and the worker count against the cluster.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

from dist_unlearn.data.files import count_overlap, load_table, require_columns, select_forget
from dist_unlearn.errors import ConfigError
from dist_unlearn.job.config import JobConfig
from dist_unlearn.job.model import ModelSource


def check_layout(cfg: JobConfig, src: ModelSource) -> None:
    """Raise ConfigError when the data layout trains another kind of model than the model folder holds."""
    fmt = cfg.data.text_format()
    if fmt.task != src.task:
        hint = (
            "give data.label_column with data.text_column"
            if src.task == "classification"
            else "give data.text_column alone, or prompt_column + response_column"
        )
        raise ConfigError(
            f"the model {cfg.model!r} is a {src.task} model but the data layout {fmt.kind!r} trains a "
            f"{fmt.task} model; {hint}."
        )


def check_training_data(cfg: JobConfig, fmt: Any) -> tuple[Any, Any]:
    """Load the training table, check its columns and resolve the forget selector against it.

    Returns:
        ``(table, selection)`` (:class:`~dist_unlearn.data.files.ForgetSelection`).
    """
    train = load_table(cfg.data.path, what="data")
    require_columns(train, fmt.columns(), what=f"data {cfg.data.path!r}")
    if "id_column" in cfg.data.model_fields_set:
        require_columns(train, {"id_column": cfg.data.id_column}, what=f"data {cfg.data.path!r}")
    selection = select_forget(train, **cfg.forget.selector(), id_column=cfg.data.id_column, what="data")
    return train, selection


def check_holdout(
    cfg: JobConfig, fmt: Any, train: Any, log: Callable[[str], None], warned: list[str]
) -> tuple[Any, int]:
    """Load the holdout, check its columns and warn (``log`` and ``warned``) when it repeats training rows.

    Returns:
        ``(table, overlap)``: the holdout and how many of its rows are identical to training rows.
    """
    holdout = load_table(cfg.holdout, what="holdout")
    require_columns(holdout, fmt.columns(), what=f"holdout {cfg.holdout!r}")
    content = [c for k, c in fmt.columns().items() if k != "label_column"]
    overlap = count_overlap(train, holdout, content)
    if overlap:
        msg = (
            f"{overlap} of the {len(holdout)} holdout rows are identical to training rows (on "
            f"{content}); the holdout should be data the model never saw, so the verdict is lenient."
        )
        warnings.warn(msg, stacklevel=3)
        warned.append(msg)
        log(f"warning: {msg}")
    return holdout, overlap


def check_workers(workers: int | None, use_gpu: bool, *, oversubscribe: bool = False) -> bool:
    """Raise ConfigError when ``workers`` exceeds what the cluster has (``preflight.check_workers``).

    With ``RAY_ADDRESS`` set (e.g. under ``ray job submit``) the cluster is joined first, so its size is
    what is checked; otherwise this machine's cores (GPUs), which the embedded Ray gets.

    Returns:
        True when this call connected to Ray (the caller shuts it down).
    """
    if workers is None:
        return False
    from dist_unlearn.preflight import check_workers as preflight_workers

    started = False
    if os.environ.get("RAY_ADDRESS"):
        from dist_unlearn.distributed.startup import ensure_ray

        started = ensure_ray(workers)
    try:
        preflight_workers(workers, use_gpu=use_gpu, oversubscribe=oversubscribe)
    except ConfigError:
        if started:
            import ray

            ray.shutdown()
        raise
    return started
