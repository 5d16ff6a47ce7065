"""`dist-unlearn unlearn`: make a user's fine-tuned model forget rows of its training data (job.yaml)."""

from __future__ import annotations

from typing import Any

import click

from dist_unlearn.cli import cli, verbose_option


def job_config_option(what: str) -> Any:
    """``--config job.yaml`` (shared by ``unlearn`` and ``audit``)."""
    return click.option(
        "--config", "-c", "config_path", required=True, type=click.Path(dir_okay=False), help=what
    )


OUTPUT_OPTION = click.option(
    "--output",
    "--out",
    "output_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Output folder (default: the job's output_dir).",
)
OVERWRITE_OPTION = click.option(
    "--overwrite", is_flag=True, help="Replace what an earlier job wrote there (never other files)."
)
THREADS_OPTION = click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="torch intra-op threads."
)
QUIET_OPTION = click.option("--quiet", "-q", is_flag=True, help="Only the verdict tables.")


@cli.command("unlearn")
@verbose_option
@job_config_option("job.yaml: model, data, forget selector, holdout, method (see configs/jobs/example.yaml).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Run on N Ray workers (DeepSpeed ranks; the embedded Ray when RAY_ADDRESS is unset).",
)
@click.option("--zero-stage", type=click.IntRange(0, 3), default=None, help="DeepSpeed ZeRO stage.")
@OUTPUT_OPTION
@click.option("--oversubscribe", is_flag=True, help="Allow more workers than cores / GPUs.")
@OVERWRITE_OPTION
@THREADS_OPTION
@QUIET_OPTION
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
    from dist_unlearn.job import run_job

    overrides: dict[str, Any] = {"workers": workers, "zero_stage": zero_stage, "output_dir": output_dir}
    if oversubscribe:
        overrides["oversubscribe"] = True
    run_and_print(run_job, config_path, overrides, overwrite=overwrite, threads=threads, quiet=quiet)


def run_and_print(
    runner: Any,
    config_path: str,
    overrides: dict[str, Any],
    *,
    overwrite: bool,
    threads: int | None,
    quiet: bool,
) -> None:
    """Load job.yaml with ``overrides``, run ``runner(cfg, overwrite=, log=)`` (the job or the audit alone),
    print the verdict tables; a bad input becomes a one-line error naming its kind."""
    from dist_unlearn.errors import DistUnlearnError
    from dist_unlearn.job import load_job

    try:
        cfg = load_job(config_path, overrides)
        if threads:
            import torch

            torch.set_num_threads(threads)
        result = runner(cfg, overwrite=overwrite, log=(lambda m: None) if quiet else None)
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

    ev_b, ev_a = audit["evidence"]["before"] or {}, audit["evidence"]["after"]
    ver, run = audit["verdict"], audit["run"]
    what = "audit only" if audit.get("audit_only") else f"method {audit['method']['name']}"
    table = Table(
        title=f"unlearn: {audit['request']['forget']['rows']} forget rows, {what}",
        title_justify="left",
    )
    table.add_column("")
    keys = ["forget_loss", "retain_loss", "holdout_loss", "forget_vs_holdout_auc", "ks_pvalue"]
    keys += [k for k in ev_a if k.endswith("_accuracy")]
    for k in keys:
        table.add_column(k.replace("forget_vs_holdout_auc", "AUC f/h"), justify="right")
    table.add_column("status")
    if ev_b:
        table.add_row("before", *[_f(ev_b.get(k), _spec(k)) for k in keys], ver.get("before_status") or "-")
    table.add_row("after" if ev_b else "model", *[_f(ev_a.get(k), _spec(k)) for k in keys], ver["status"])
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    console.print(table)
    print_subjects(audit, console)
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
    print_probes(audit)
    where = f"{run['workers']} workers, ZeRO-{run['zero_stage']}" if run.get("workers") else "in-process"
    vs = audit.get("cost_against_retraining")
    cost_txt = vs["sentence"] if vs else "example passes not reported"
    if audit.get("audit_only"):
        cost_txt = "no unlearning (audit only)"
    roles = (run.get("cost") or {}).get("by_role") or {}
    if roles:
        cost_txt += " [" + ", ".join(f"{r} {e['example_passes']:.0f}" for r, e in roles.items()) + "]"
    click.echo(f"cost: {cost_txt}; wall {run['wall_time_s']:.1f} s ({where})")
    extra = [f"audit {(audit.get('audit') or {}).get('cost', {}).get('example_passes', 0):.0f}"]
    probes = audit.get("probes") or {}
    if probes.get("enabled"):
        extra.append(f"probes {(probes.get('cost') or {}).get('example_passes', 0):.0f}")
    click.echo("apart from the unlearning: " + ", ".join(extra) + " example passes")


def print_subjects(audit: dict[str, Any], console: Any) -> None:
    """One row per subject: status before and after, the primary test's quantile, band and flags."""
    from rich.table import Table

    from dist_unlearn.job.audit_sections import subject_rows

    ver = audit["verdict"]
    if not ver.get("subjects"):
        return
    table = Table(
        title=f"subjects ({(audit.get('subjects') or {}).get('column') or 'each forget row'}): where each "
        "falls among the unseen rows (0.5 = like them)",
        title_justify="left",
    )
    for col in ("subject", "rows", "before", "after", "quantile", "band", "flagged by"):
        table.add_column(col, justify="right" if col in ("rows", "quantile") else "left")
    for row in subject_rows(ver):
        table.add_row(*row)
    console.print(table)
    attacks = (audit["evidence"]["after"] or {}).get("attacks") or {}
    before = (audit["evidence"]["before"] or {}).get("attacks") or {}
    if attacks:
        click.echo(
            "attack AUCs before -> after: "
            + ", ".join(f"{k} {_f(before.get(k), '.2f')} -> {_f(v, '.2f')}" for k, v in attacks.items())
        )


def print_probes(audit: dict[str, Any]) -> None:
    """One line per robustness probe: its status, the LOSS AUC it brought back."""
    probes = audit.get("probes") or {}
    if not probes.get("enabled"):
        return
    for p in probes["probes"]:
        if p.get("skipped"):
            click.echo(f"probe {p['probe']}: skipped ({p['skipped']})")
            continue
        g = p["aucs"].get("loss") or {}
        ret = g.get("returned")
        click.echo(
            f"probe {p['probe']}: {p['status']}; LOSS AUC {_f(g.get('delivered'), '.2f')} -> "
            f"{_f(g.get('probe'), '.2f')}"
            + (f" ({ret:.0%} of the gap back)" if ret is not None else "")
            + (f"; failing: {', '.join(map(str, p['failing']))}" if p["failing"] else "")
        )
