"""The audit record of one job as a plain dict (``audit.json``; written by :mod:`dist_unlearn.job.audit`).

Its sections: ``request`` (what was asked: data, forget selector and ids, holdout and its split), ``model``
(input and output weights with their sha256), ``method``, ``run`` (engine, times, cost, steps, stop rule),
``verdict``, ``checks`` (utility), ``warnings``, ``not_checked`` and ``provenance``.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from dist_unlearn.job.audit import AUDIT_FORMAT
from dist_unlearn.job.model import ModelSource


def path_sha256(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (sorted relative paths and their sha256, one per line)."""
    from dist_unlearn.output import sha256_file

    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    lines = [f"{f.relative_to(p).as_posix()} {sha256_file(f)}\n" for f in sorted(p.rglob("*")) if f.is_file()]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def input_hashes(src: ModelSource) -> dict[str, str]:
    """sha256 of every weight file of the input model (and of the base model of an adapter, ``base/...``)."""
    from dist_unlearn.provenance import weight_file_hashes

    hashes = weight_file_hashes(src.path)
    if src.adapter:
        hashes.update({f"base/{k}": v for k, v in weight_file_hashes(src.base).items()})
    return hashes


def request_record(job: Any, ids: dict[str, Any]) -> dict[str, Any]:
    """What was asked: the data, the forget selection (and its ids file), the holdout and its split."""
    cfg, fmt, sel = job.cfg, job.fmt, job.selection
    record: dict[str, Any] = {
        "data": {
            "path": str(cfg.data.path),
            "sha256": path_sha256(cfg.data.path),
            "rows": len(job.train),
            "layout": fmt.kind,
            "columns": fmt.columns(),
            "max_length": fmt.max_length,
        },
        "forget": {
            "selector": sel.selector,
            "rows": len(sel.indices),
            "id_source": sel.id_source,
            "ids_file": ids,
        },
        "retain_rows": len(job.rows["retain"]),
        "holdout": None,
    }
    if job.holdout is not None:
        record["holdout"] = {
            "path": str(cfg.holdout),
            "sha256": path_sha256(cfg.holdout),
            "rows": len(job.holdout),
            "overlap_with_training": job.overlap,
            "split": job.split.record if job.split is not None else None,
        }
    return record


def run_record(job: Any, end_utc: str) -> dict[str, Any]:
    """How the run went: engine, times, cost, steps, stop rule."""
    stats, distributed = job.stats, job.distributed
    return {
        "workers": stats.get("workers") if distributed else None,
        "zero_stage": stats.get("zero_stage", job.cfg.zero_stage) if distributed else None,
        "engine_note": job.engine_note,
        "start_utc": job.start_utc,
        "end_utc": end_utc,
        "wall_time_s": time.perf_counter() - job.t0,
        "unlearn_wall_time_s": stats.get("wall_time"),
        "cost": stats.get("cost"),
        "num_steps": stats.get("num_steps"),
        "accepted_steps": stats.get("accepted_steps"),
        "stop_reason": stats.get("stop_reason"),
        "update_norm": stats.get("update_norm"),
        "hvp_mode": stats.get("hvp_mode"),
        "stop_rule": stats.get("stop_rule"),
        "stop_checks": stats.get("stop_checks"),
    }


def not_checked(job: Any) -> list[str] | None:
    """What the audit could not check, and why (None: nothing left out)."""
    if job.holdout is None:
        return [
            "whether the forget rows are still recognisable: no holdout (data the model never saw) was "
            "given, so no forget-vs-holdout AUC or KS test could be computed (status "
            "unknown_without_holdout).",
            "no forgetting stop rule: it needs unseen calibration rows, which come from the holdout; the "
            "run stopped on its own rules (stop_reason in run).",
        ]
    if job.split is not None and not job.split.record["stop_rule"]:
        return [f"no forgetting stop rule: {job.split.record['why']}"]
    return None


def audit_record(
    job: Any, verdict: dict[str, Any], ids: dict[str, Any], outputs: dict[str, Any], *, end_utc: str
) -> dict[str, Any]:
    """The whole record of a finished job (:class:`~dist_unlearn.job.recipe.JobState`), without evidence.

    Args:
        job: the job's state after the unlearning step.
        verdict: :func:`dist_unlearn.eval.verdict.decide` of the evidence after (with ``before_status``).
        ids: the forget ids file's record (path, count, sha256).
        outputs: ``{"path", "weight_sha256"}`` of the written model.
        end_utc: when the run ended.
    """
    from dist_unlearn.job.audit import utility_checks
    from dist_unlearn.provenance import provenance

    src = job.src
    record: dict[str, Any] = {
        "format": AUDIT_FORMAT,
        "request": request_record(job, ids),
        "model": {
            "input": {
                "path": str(src.path),
                "kind": src.task,
                "adapter": src.adapter,
                "base_model": str(src.base) if src.adapter else None,
                "weight_sha256": input_hashes(src),
            },
            "output": outputs,
        },
        "method": job.options_record,
        "run": run_record(job, end_utc),
        "verdict": verdict,
        "checks": utility_checks(job.before, job.after),
        "warnings": job.warnings,
    }
    missing = not_checked(job)
    if missing is not None:
        record["not_checked"] = missing
    record["provenance"] = provenance({"workers": record["run"]["workers"], "use_gpu": job.use_gpu})
    return record
