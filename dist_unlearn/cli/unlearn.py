"""`dist-unlearn unlearn`: make a user's fine-tuned model forget rows of its training data (job.yaml)."""

from __future__ import annotations

from typing import Any

import click

from dist_unlearn.cli import cli, verbose_option


@cli.command("unlearn")
@verbose_option
@click.option(
    "--config",
    "-c",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="job.yaml: model, data, forget selector, holdout, method (see configs/jobs/example.yaml).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Run on N Ray workers (DeepSpeed ranks; the embedded Ray when RAY_ADDRESS is unset).",
)
@click.option("--zero-stage", type=click.IntRange(0, 3), default=None, help="DeepSpeed ZeRO stage.")
@click.option(
    "--output",
    "--out",
    "output_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Output folder (default: the job's output_dir).",
)
@click.option("--oversubscribe", is_flag=True, help="Allow more workers than cores / GPUs.")
@click.option(
    "--overwrite", is_flag=True, help="Replace what an earlier job wrote there (never other files)."
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch intra-op threads.")
@click.option("--quiet", "-q", is_flag=True, help="Only the verdict table.")
def unlearn_command(
    config_path: str,
    workers: int | None,
    zero_stage: int | None,
    output_dir: str | None,
    oversubscribe: bool,
    overwrite: bool,
    threads: int | None,
    quiet: bool,
) -> None:
    """Unlearn the forget rows from your model; write the model, audit.json and audit.md."""
    from dist_unlearn.errors import DistUnlearnError
    from dist_unlearn.job import load_job, run_job

    overrides: dict[str, Any] = {"workers": workers, "zero_stage": zero_stage, "output_dir": output_dir}
    if oversubscribe:
        overrides["oversubscribe"] = True
    try:
        cfg = load_job(config_path, overrides)
        if threads:
            import torch

            torch.set_num_threads(threads)
        result = run_job(cfg, overwrite=overwrite, log=(lambda m: None) if quiet else None)
    except DistUnlearnError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    print_verdict(result.audit)
    click.echo(f"audit: {result.output_dir / 'audit.md'}")


def _f(x: Any, spec: str = ".3f") -> str:
    if x is None:
        return "-"
    return format(x, spec) if isinstance(x, float) else str(x)


def _spec(key: str) -> str:
    return ".3g" if key == "ks_pvalue" else ".3f"


def print_verdict(audit: dict[str, Any]) -> None:
    """The before/after evidence table, the verdict and the cost."""
    from rich.console import Console
    from rich.table import Table

    ev_b, ev_a = audit["evidence"]["before"], audit["evidence"]["after"]
    ver, run = audit["verdict"], audit["run"]
    table = Table(
        title=f"unlearn: {audit['request']['forget']['rows']} forget rows, method {audit['method']['name']}",
        title_justify="left",
    )
    table.add_column("")
    keys = ["forget_loss", "retain_loss", "holdout_loss", "forget_vs_holdout_auc", "ks_pvalue"]
    keys += [k for k in ev_b if k.endswith("_accuracy")]
    for k in keys:
        table.add_column(k.replace("forget_vs_holdout_auc", "AUC f/h"), justify="right")
    table.add_column("status")
    table.add_row("before", *[_f(ev_b.get(k), _spec(k)) for k in keys], ver.get("before_status", "-"))
    table.add_row("after", *[_f(ev_a.get(k), _spec(k)) for k in keys], ver["status"])
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    console.print(table)
    click.echo(ver["sentence"])
    chk = audit.get("checks") or {}
    parts = []
    for key in ("retain_loss", "holdout_loss"):
        ch = chk.get(f"{key}_change")
        if ch is not None:
            parts.append(f"{key} {ch:+.1%}")
    if parts:
        click.echo("utility: " + ", ".join(parts) + f" (tolerance {chk.get('tolerance', 0.1):.0%})")
    checks = run.get("stop_checks") or []
    split = (audit["request"].get("holdout") or {}).get("split") or {}
    if checks:
        last = checks[-1]
        click.echo(
            f"stop rule: {len(checks)} checks on {split.get('calibration_rows')} calibration rows, last AUC "
            f"{last['auc']:.3f} ({last['decision']}); stop reason {run.get('stop_reason')}; the verdict is "
            f"on the other {split.get('audit_rows')} holdout rows"
        )
    cost = (run.get("cost") or {}).get("example_passes")
    where = f"{run['workers']} workers, ZeRO-{run['zero_stage']}" if run.get("workers") else "in-process"
    cost_txt = f"{cost:.0f} example passes" if cost is not None else "example passes not reported"
    click.echo(f"cost: {cost_txt}; wall {run['wall_time_s']:.1f} s ({where})")
