"""`dist-unlearn run`."""

from __future__ import annotations

import click

from dist_unlearn.cli import cli


@cli.command("run", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def run_command() -> None:
    """Not yet implemented."""
    click.echo("dist-unlearn run: not yet implemented", err=True)
    raise SystemExit(2)
