"""`dist-unlearn report`."""

from __future__ import annotations

import click

from dist_unlearn.cli import cli


@cli.command("report", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def report_command() -> None:
    """Not yet implemented."""
    click.echo("dist-unlearn report: not yet implemented", err=True)
    raise SystemExit(2)
