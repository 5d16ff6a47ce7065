"""The ``dist-unlearn`` command (also ``python -m dist_unlearn``, which ``ray job submit`` runs).

Each subcommand lives in its own module and registers itself on :data:`cli`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

VERBOSE_HELP = "Also show the libraries' own logs and progress bars (transformers, datasets, Ray, DeepSpeed)."


def _verbose(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    from dist_unlearn.quiet import quiet_libraries

    if value:
        quiet_libraries(verbose=True)
    return value


def verbose_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``-v`` on a subcommand: the third-party chatter the command silences by default comes back."""
    return click.option(
        "--verbose", "-v", is_flag=True, expose_value=False, callback=_verbose, help=VERBOSE_HELP
    )(command)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dist-unlearn")
@click.option("--verbose", "-v", is_flag=True, help=VERBOSE_HELP)
def cli(verbose: bool) -> None:
    """dist-unlearn: make a trained network forget part of its training data (CureNewton)."""
    from dist_unlearn.quiet import quiet_libraries

    quiet_libraries(verbose=verbose)
    # undone when the command ends (commands run in-process, e.g. from tests, leave nothing behind)
    click.get_current_context().call_on_close(lambda: quiet_libraries(verbose=True))


def _register() -> None:
    from dist_unlearn.cli import bench, eval_cmd, report, run, unlearn  # noqa: F401  (each adds its command)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    _register()
    cli.main(args=argv, prog_name="dist-unlearn")
