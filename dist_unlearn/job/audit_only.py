"""Audit a model as given, without unlearning: ``dist-unlearn audit --config job.yaml``.

The same job.yaml and the same steps as :func:`dist_unlearn.job.recipe.run_job` (the checks, the rows, the
holdout split, the encoding check, the evidence, the per-subject verdict, the robustness probes), minus the
unlearning: the model is judged as it is. Uses: audit a model that someone else unlearned (or retrained
without the subjects) before deploying it; re-audit with another holdout or stricter settings. The output
folder gets ``audit.json``, ``audit.md``, the plots and ``forget_ids.txt``; no model is written.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from dist_unlearn.job.config import JobConfig, as_job
from dist_unlearn.job.recipe import (
    JobResult,
    JobState,
    check_encoding,
    check_inputs,
    load_rows,
    measure,
    now_utc,
    probe,
)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def audit_model(
    config: JobConfig | dict | str | Path, *, overwrite: bool = False, log: Any = None
) -> JobResult:
    """Audit the job's model as given (module docstring) and write the audit.

    Args:
        config: a job config (``method``, ``workers`` and ``zero_stage`` are not used).
        overwrite: replace what an earlier run wrote in ``output_dir`` (never other files).
        log: progress lines (default: stderr).

    Returns:
        :class:`~dist_unlearn.job.recipe.JobResult` (``model``: the audited model).

    Raises:
        ConfigError, DataError, ModelError, OutputError: bad input, before expensive work, nothing written.
    """
    job = JobState(cfg=as_job(config), log=log or _stderr, overwrite=overwrite, start_utc=now_utc())
    check_inputs(job)
    job.distributed = False
    load_rows(job)
    check_encoding(job)
    job.after = measure(job, "after")
    probe(job)
    job.options_record = {"name": None, "given": {}, "options": {}}
    return JobResult(output_dir=job.out, audit=write_audit_only(job), model=job.model)


def write_audit_only(job: JobState) -> dict[str, Any]:
    """The audit of a model as given: ``audit.json``, ``audit.md``, the plots and ``forget_ids.txt``."""
    from dist_unlearn.job.audit import strip_losses, write_audit
    from dist_unlearn.job.judge import verdict_of
    from dist_unlearn.job.record import audit_record
    from dist_unlearn.output import OutputDir
    from dist_unlearn.provenance import write_ids_file

    verdict = verdict_of(job)
    job.log(f"verdict: {verdict['status']}. {verdict['sentence']}")
    with OutputDir(job.out, overwrite=job.overwrite, command="audit") as od:
        ids = write_ids_file(od.stage / "forget_ids.txt", job.selection.ids)
        ids["path"] = str(job.out / "forget_ids.txt")
        record = audit_record(job, verdict, ids, None, end_utc=now_utc())
        record["audit_only"] = True
        write_audit(od.stage, record, None, job.after)
        od.commit()
    record["evidence"] = {"before": None, "after": strip_losses(job.after)}
    return record
