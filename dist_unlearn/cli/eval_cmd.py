"""`dist-unlearn eval`."""

from __future__ import annotations

import click

from dist_unlearn.cli import cli


@cli.command("eval", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def eval_cmd_command() -> None:
    """Not yet implemented."""
    click.echo("dist-unlearn eval: not yet implemented", err=True)
    raise SystemExit(2)
