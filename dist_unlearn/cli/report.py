"""`dist-unlearn report`: report.md + PNG plots from a results.json.

Imports only what it needs (no torch): it answers in well under two seconds, also to reject a bad file.
"""

from __future__ import annotations

from pathlib import Path

import click

from dist_unlearn.cli import cli


@cli.command("report")
@click.option(
    "--results",
    "results_path",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="results.json, or the directory that holds it.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output directory for report.md and the plots (default: next to results.json).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace a report an earlier dist-unlearn command wrote there (never other files).",
)
def report_command(results_path: Path, out_dir: Path | None, overwrite: bool) -> None:
    """Write report.md, PNG plots (metrics per method, update norms, Hessian spectrum) and config.yaml."""
    from dist_unlearn.errors import DistUnlearnError
    from dist_unlearn.eval.report import REPORT_FILES, write_report
    from dist_unlearn.eval.results import load_results
    from dist_unlearn.output import OutputDir, check_output_dir

    if out_dir is None:
        out_dir = results_path if results_path.is_dir() else results_path.parent
    try:
        data = load_results(results_path)
        check_output_dir(out_dir, overwrite=overwrite, will_write=REPORT_FILES)
        with OutputDir(
            out_dir, overwrite=overwrite, command="dist-unlearn report", will_write=REPORT_FILES
        ) as od:
            write_report(data, od.stage)
            od.commit()
    except DistUnlearnError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    click.echo(f"wrote {Path(out_dir) / 'report.md'}")
