"""`dist-unlearn eval`: re-evaluate the saved models of a run against the retrained oracle."""

from __future__ import annotations

import click

from dist_unlearn.cli import cli


@cli.command("eval")
@click.option("--config", "-c", "config_path", required=True, type=click.Path(dir_okay=False),
              help="The YAML config the run used.")
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Output directory of the run (default: the config's output_dir).")
@click.option("--model", "models", multiple=True, metavar="NAME=PATH",
              help="Evaluate this saved model (repeatable); default: every folder in <run-dir>/models.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def eval_cmd_command(config_path: str, run_dir: str | None, models: tuple[str, ...], quiet: bool) -> None:
    """Metrics of saved models vs the oracle retrained without the forget set; writes <run-dir>/eval.json."""
    from dist_unlearn.cli.run import print_results_table
    from dist_unlearn.config import load_config
    from dist_unlearn.errors import DistUnlearnError

    try:
        cfg = load_config(config_path, {"progress": False} if quiet else None)
        named = {}
        for item in models:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise click.BadParameter(f"{item!r} is not NAME=PATH", param_hint="--model")
            named[name] = path
        from dist_unlearn.pipeline import evaluate_saved

        out = evaluate_saved(cfg, run_dir or cfg.output_dir, named or None,
                             log=(lambda msg: None) if quiet else None)
    except DistUnlearnError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    print_results_table(out, title=f"{cfg.name}: saved models vs retrained oracle")
