"""`dist-unlearn audit`: judge a model as given against a job's request, without unlearning it."""

from __future__ import annotations

from dist_unlearn.cli import cli, verbose_option
from dist_unlearn.cli.unlearn import (
    OUTPUT_OPTION,
    OVERWRITE_OPTION,
    QUIET_OPTION,
    THREADS_OPTION,
    job_config_option,
)


@cli.command("audit")
@verbose_option
@job_config_option("job.yaml: the model to judge, its data, the forget selector (the subjects), the holdout.")
@OUTPUT_OPTION
@OVERWRITE_OPTION
@THREADS_OPTION
@QUIET_OPTION
def audit_command(
    config_path: str, output_dir: str | None, overwrite: bool, threads: int | None, quiet: bool
) -> None:
    """Audit the job's model as it is: every subject against the holdout, attacks, extraction, probes."""
    from dist_unlearn.cli.unlearn import run_and_print
    from dist_unlearn.job.audit_only import audit_model

    run_and_print(
        audit_model,
        config_path,
        {"output_dir": output_dir},
        overwrite=overwrite,
        threads=threads,
        quiet=quiet,
    )
