"""`dist-unlearn run`: one experiment from a YAML config (see ``dist_unlearn.config`` and ``configs/``)."""

from __future__ import annotations

import os
from typing import Any

import click

from dist_unlearn.cli import cli, verbose_option


@cli.command("run")
@verbose_option
@click.option(
    "--config",
    "-c",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="YAML experiment config, e.g. configs/experiments/digits_demo.yaml.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Run curvature methods on N distributed workers (Ray + DeepSpeed); overrides the config.",
)
@click.option(
    "--zero-stage", type=click.IntRange(0, 3), default=None, help="DeepSpeed ZeRO stage (with --workers)."
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Output directory (default: the config's output_dir).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the outputs of an earlier run in the output directory (never other files).",
)
@click.option(
    "--oversubscribe",
    is_flag=True,
    help="Allow more --workers than CPU cores / GPUs (they share them; a warning instead of an error).",
)
@click.option("--no-cache", is_flag=True, help="Retrain the original model and oracle even if cached.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch intra-op threads.")
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="No progress bars or log lines (nor Ray/DeepSpeed chatter); the table.",
)
def run_command(
    config_path: str,
    workers: int | None,
    zero_stage: int | None,
    out_dir: str | None,
    overwrite: bool,
    oversubscribe: bool,
    no_cache: bool,
    threads: int | None,
    quiet: bool,
) -> None:
    """Train, retrain without the forget set, unlearn with every configured method, evaluate, report."""
    from dist_unlearn.cli.logs import output_mode

    with output_mode(quiet=quiet):
        results, cfg = _run(
            config_path, workers, zero_stage, out_dir, overwrite, oversubscribe, no_cache, threads, quiet
        )
    out = out_dir or cfg.output_dir
    if cfg.eval.table:
        print_results_table(
            results, title=f"{cfg.name}: {cfg.task.name}, {cfg.forget.level}-level forgetting"
        )
    click.echo(f"results: {os.path.join(out, 'results.json')}")


def _run(
    config_path: str,
    workers: int | None,
    zero_stage: int | None,
    out_dir: str | None,
    overwrite: bool,
    oversubscribe: bool,
    no_cache: bool,
    threads: int | None,
    quiet: bool,
) -> tuple[dict, Any]:
    import shlex
    import sys

    from dist_unlearn.config import load_config
    from dist_unlearn.errors import DistUnlearnError

    overrides: dict[str, Any] = {"workers": workers, "zero_stage": zero_stage}
    if oversubscribe:
        overrides["oversubscribe"] = True
    if quiet:
        overrides["progress"] = False
    try:
        cfg = load_config(config_path, overrides)
        _set_threads(threads)
        from dist_unlearn.pipeline import run_experiment

        log = (lambda msg: None) if quiet else None
        results = run_experiment(
            cfg,
            out_dir=out_dir,
            use_cache=not no_cache,
            log=log,
            overwrite=overwrite,
            command=shlex.join(["dist-unlearn", *sys.argv[1:]]),
        )
    except DistUnlearnError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    return results, cfg


def _set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def _fmt(x: Any, spec: str = ".3f") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if spec == "sci":
            return f"{x:.2e}"
        return format(x, spec)
    return str(x)


def print_results_table(results: dict, *, title: str = "results") -> None:
    """Print one row per method (``original`` and ``retrain`` are the references) with rich."""
    from rich.console import Console
    from rich.table import Table

    lm = (results.get("experiment") or {}).get("kind") == "causal_lm"
    cols = (
        ["forget_quality", "model_utility", "ppl_forget", "ppl_retain"]
        if lm
        else ["tow", "acc_retain", "acc_forget", "acc_test", "js"]
    )
    cols += ["mia_auc" if not lm else "mia_loss", "update_norm", "param_dist"]
    table = Table(title=title, title_justify="left")
    table.add_column("method")
    for c in cols:
        table.add_column(c, justify="right")
    methods = results.get("methods") or {}
    verdicts = results.get("verdicts") or {}
    retrain_cost = ((methods.get("retrain") or {}).get("stats") or {}).get("cost")
    for c in ("steps", "HVPs", "passes", "passes % retrain", "time s", "wall % retrain", "verdict"):
        table.add_column(c, justify="right")
    from dist_unlearn.cost import percent_of

    for name, rec in methods.items():
        metrics = rec.get("metrics", {})
        stats = rec.get("stats") or {}
        frac = metrics.get("time_fraction_of_retrain")
        cost = stats.get("cost")
        ref = name in ("original", "retrain")
        verdict = (verdicts.get(name) or {}).get("vs_retrained") or {}
        table.add_row(
            f"[dim]{name}[/dim]" if ref else name,
            *[_fmt(_get(metrics, c), "sci" if c == "update_norm" else ".3f") for c in cols],
            _fmt(len(rec.get("steps") or []) or None),
            _fmt(stats.get("total_hvps")),
            _fmt(None if not cost else cost.get("example_passes"), ".4g"),
            _fmt(None if name == "original" else percent_of(cost, retrain_cost), ".1f"),
            _fmt((rec.get("resources") or {}).get("wall_time_s"), ".2f"),
            _fmt(None if frac is None or name == "original" else 100 * frac, ".1f"),
            _fmt(VERDICT_SHORT.get(verdict.get("status", ""))),
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=220)  # a log file: the whole table on one line per row
    console.print(table)


#: verdict status -> table cell (``dist_unlearn.eval.verdict`` statuses)
VERDICT_SHORT = {
    "forgotten": "forgotten",
    "partially_forgotten": "partial",
    "not_forgotten": "NOT forgotten",
    "unknown_without_holdout": "unknown",
}

#: metric names as tried in order (eval may name them e.g. "tow" or "tug_of_war")
METRIC_ALIASES = {
    "tow": ("tow", "tug_of_war", "ToW"),
    "acc_retain": ("acc_retain", "retain_acc", "accuracy_retain"),
    "acc_forget": ("acc_forget", "forget_acc", "accuracy_forget"),
    "acc_test": ("acc_test", "test_acc", "accuracy_test"),
    "js": ("js_forget", "js_divergence", "js"),
    "param_dist": ("param_distance", "parameter_distance", "param_dist"),
    "update_norm": ("update_norm",),
    "mia_auc": ("mia_auc", "mia"),
    "mia_loss": ("mia_loss",),
    "forget_quality": ("forget_quality",),
    "model_utility": ("model_utility",),
    "ppl_forget": ("forget_ppl", "ppl_forget", "forget_perplexity"),
    "ppl_retain": ("retain_ppl", "ppl_retain", "retain_perplexity"),
}


def _get(metrics: dict, name: str) -> Any:
    """A metric by canonical name, looked up through :data:`METRIC_ALIASES` and one level of nesting."""
    for alias in METRIC_ALIASES.get(name, (name,)):
        if alias in metrics:
            return metrics[alias]
    for v in metrics.values():
        if isinstance(v, dict):
            got = _get(v, name)
            if got is not None:
                return got
    return None
