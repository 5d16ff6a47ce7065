"""``results.json``: the record of one experiment, written atomically.

Schema (version 1)::

    {
      "schema_version": 1,                      # filled in if absent
      "created_utc": "2026-11-26T15:00:00Z",    # filled in if absent
      "experiment": {...},                      # optional, free-form: task, forget spec, config, machine
      "methods": {                              # required: method name -> record (include "original" and
        "cure_newton": {                        #   "retrain" as rows for reference)
          "metrics":   {"acc_forget": 0.93, "tow": 0.97, ...},   # required: flat name -> number | null
          "steps":     [{"step": 0, "loss": .., "grad_norm": .., "step_norm": .., "M": .., "hvps": ..,
                         "accepted": true, ...}, ...],           # optional, StepRecord fields
          "resources": {"wall_time_s": .., "peak_rss_bytes": .., ...},  # optional, ResourceUsage fields
          "stats":     {...}                                      # optional, free-form
        }
      },
      "hessian_spectrum": [                     # optional: SLQ density estimates (a single dict also works)
        {"label": "original, retain loss", "grid": [..], "density": [..]}
      ],
      "rounds": [{"round": 0, "methods": {...}}, ...]   # optional: sequential unlearning, one per round
    }

Other top-level keys are kept as they are (not validated).

Metric names follow open-unlearning / TOFU where they apply (``forget_quality``, ``model_utility``,
``forget_Q_A_Prob``, ``retain_Q_A_ROUGE``, ``forget_truth_ratio``, ``retain_Truth_Ratio``, ``mia_loss``,
``mia_min_k``, ``privleak``); see :mod:`dist_unlearn.eval.classification` and :mod:`dist_unlearn.eval.lm`.
NaN and infinities are written as ``null`` (strict JSON). Writing goes to a temporary file in the target
directory, fsync, then ``os.replace``: a reader sees the old file or the new one, never a partial one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from dist_unlearn.errors import DataError, OutputError

SCHEMA_VERSION = 1
RESULTS_NAME = "results.json"
METHOD_KEYS = ("metrics", "steps", "resources", "stats")


def to_jsonable(obj: Any, *, where: str = "results", strict: bool = True) -> Any:
    """Convert to plain JSON types: numpy/torch scalars and arrays, dataclasses, Paths, tuples.

    Non-finite floats become None. Anything else raises OutputError naming where it was found, or, with
    ``strict=False`` (records of a run's options, which may hold functions), becomes its ``repr``; mapping
    keys are then written as strings.
    """
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(
            {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, where=where, strict=strict
        )
    if hasattr(obj, "as_dict") and callable(obj.as_dict):
        return to_jsonable(obj.as_dict(), where=where, strict=strict)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), where=where, strict=strict)
    if type(obj).__module__.startswith("torch") and hasattr(obj, "tolist"):
        return to_jsonable(obj.detach().cpu().tolist(), where=where, strict=strict)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if strict and not isinstance(k, str | int):
                raise OutputError(f"{where}: key {k!r} of type {type(k).__name__} is not a JSON object key.")
            out[str(k)] = to_jsonable(v, where=f"{where}[{k!r}]", strict=strict)
        return out
    if isinstance(obj, Sequence | set | frozenset):
        return [to_jsonable(v, where=f"{where}[{i}]", strict=strict) for i, v in enumerate(obj)]
    if not strict:
        return repr(obj)
    raise OutputError(f"{where}: value of type {type(obj).__name__} cannot be written to JSON ({obj!r:.80}).")


def method_record(
    metrics: Mapping[str, Any],
    *,
    steps: Sequence[Any] | None = None,
    resources: Any = None,
    stats: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build one ``methods[name]`` entry from metric dicts, StepRecords, a ResourceUsage and stats."""
    record: dict[str, Any] = {"metrics": dict(metrics)}
    if steps is not None:
        record["steps"] = list(steps)
    if resources is not None:
        record["resources"] = resources
    if stats is not None:
        record["stats"] = dict(stats)
    return to_jsonable(record, where="method_record")


def validate_results(results: Mapping[str, Any]) -> None:
    """Check a results dict against the schema (module docstring); raise DataError naming the problem."""
    if not isinstance(results, Mapping):
        raise DataError(f"results must be a dict, got {type(results).__name__}.")
    version = results.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise DataError(
            f"results schema_version {version!r} is not supported (this code reads {SCHEMA_VERSION})."
        )
    methods = results.get("methods")
    if not isinstance(methods, Mapping) or not methods:
        raise DataError("results need a non-empty 'methods' dict: method name -> {'metrics': {...}, ...}.")
    for name, rec in methods.items():
        if not isinstance(rec, Mapping) or not isinstance(rec.get("metrics"), Mapping):
            raise DataError(f"results['methods'][{name!r}] needs a 'metrics' dict.")
        unknown = sorted(set(rec) - set(METHOD_KEYS))
        if unknown:
            raise DataError(
                f"results['methods'][{name!r}] has unknown keys {unknown}; allowed: {list(METHOD_KEYS)}."
            )
        for metric, value in rec["metrics"].items():
            if value is not None and not isinstance(value, int | float):
                raise DataError(
                    f"metric {metric!r} of {name!r} is {value!r}; metrics must be numbers or null."
                )
        if "steps" in rec and not isinstance(rec["steps"], list):
            raise DataError(f"results['methods'][{name!r}]['steps'] must be a list of step dicts.")
    spectrum = results.get("hessian_spectrum")
    if spectrum is not None:
        for i, s in enumerate([spectrum] if isinstance(spectrum, Mapping) else spectrum):
            if (
                not isinstance(s, Mapping)
                or len(s.get("grid", ())) != len(s.get("density", ()))
                or not s.get("grid")
            ):
                raise DataError(
                    f"hessian_spectrum[{i}] needs 'grid' and 'density' lists of equal, non-zero length."
                )


def _file_mode(path: Path) -> int:
    """The mode of the file being replaced, else 0666 minus the process umask."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        pass
    try:
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = 0o022
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, ``os.replace``).

    On any failure the temp file is removed, an existing ``path`` is left untouched and OutputError is
    raised.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory {str(path.parent)!r}: {exc}") from exc
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, _file_mode(path))  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise OutputError(
            f"could not write {str(path)!r}: {exc}; the previous file, if any, is unchanged."
        ) from exc
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
    return path


def write_results(results: Mapping[str, Any], out_dir: str | os.PathLike) -> Path:
    """Validate ``results`` and write ``out_dir/results.json`` atomically.

    Args:
        results: dict following the schema of the module docstring (numpy/torch values, dataclasses such as
            StepRecord and ResourceUsage are converted).
        out_dir: directory (created if needed).

    Returns:
        The path of ``results.json``.

    Raises:
        OutputError: a value cannot be written as JSON, or the file cannot be written (the old one stays).
        DataError: the structure does not follow the schema.
    """
    if not isinstance(results, Mapping):
        raise DataError(f"results must be a dict, got {type(results).__name__}.")
    data = to_jsonable(results)
    data.setdefault("schema_version", SCHEMA_VERSION)
    data.setdefault("created_utc", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    validate_results(data)
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    return atomic_write_bytes(Path(out_dir) / RESULTS_NAME, text.encode("utf-8"))


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a ``results.json`` (``path`` may be the file or its directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"no results file at {str(path)!r}.") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{str(path)!r} is not valid JSON: {exc}.") from exc
    validate_results(data)
    return data
