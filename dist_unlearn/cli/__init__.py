"""The ``dist-unlearn`` command (also ``python -m dist_unlearn``, which ``ray job submit`` runs).

Each subcommand lives in its own module and registers itself on :data:`cli`.
"""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dist-unlearn")
def cli() -> None:
    """dist-unlearn: make a trained network forget part of its training data (CureNewton)."""


def _register() -> None:
    from dist_unlearn.cli import audit, bench, eval_cmd, report, run, unlearn  # noqa: F401  (each adds its command)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    _register()
    cli.main(args=argv, prog_name="dist-unlearn")
