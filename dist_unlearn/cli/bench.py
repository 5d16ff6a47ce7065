"""`dist-unlearn bench`."""

from __future__ import annotations

import click

from dist_unlearn.cli import cli


@cli.command("bench", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def bench_command() -> None:
    """Not yet implemented."""
    click.echo("dist-unlearn bench: not yet implemented", err=True)
    raise SystemExit(2)
