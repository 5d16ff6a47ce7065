"""`dist-unlearn report`: report.md + PNG plots from a results.json."""

from __future__ import annotations

from pathlib import Path

import click

from dist_unlearn.cli import cli
from dist_unlearn.errors import DistUnlearnError


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
def report_command(results_path: Path, out_dir: Path | None) -> None:
    """Write report.md and PNG plots (metrics per method, update norms, Hessian spectrum)."""
    from dist_unlearn.eval.report import write_report

    if out_dir is None:
        out_dir = results_path if results_path.is_dir() else results_path.parent
    try:
        path = write_report(results_path, out_dir)
    except DistUnlearnError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {path}")
