"""`dist-unlearn bench`: the scale-out benchmark (worker counts x ZeRO stages) and the cost model."""

from __future__ import annotations

import json
import shlex

import click

from dist_unlearn.cli import cli


def _int_list(text: str, what: str, allowed: range | None = None) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a comma-separated list of integers (e.g. 1,2)", param_hint=what
        ) from None
    if not values:
        raise click.BadParameter("give at least one value", param_hint=what)
    bad = [v for v in values if (v < 1 if allowed is None else v not in allowed)]
    if bad:
        rule = "positive" if allowed is None else f"in {allowed.start}..{allowed.stop - 1}"
        raise click.BadParameter(f"{bad} not allowed: values must be {rule}", param_hint=what)
    return values


@cli.command("bench")
@click.option("--workers", default="1,2", show_default=True, help="Worker counts, comma-separated.")
@click.option("--zero", "zero_text", default="0,2,3", show_default=True, help="ZeRO stages, comma-separated.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="outputs/bench",
    show_default=True,
    help="Directory for bench.json, projection.json, bench.png, bench.md.",
)
@click.option(
    "--model",
    type=click.Choice(["mlp", "gpt2"]),
    default="mlp",
    show_default=True,
    help="Benchmark workload (built from code, no download).",
)
@click.option(
    "--hvp",
    type=click.Choice(["auto", "both", "exact", "fd"]),
    default="auto",
    show_default=True,
    help="auto: exact under ZeRO 0-2, FD under ZeRO-3; both: exact and FD where possible.",
)
@click.option("--rows", type=click.IntRange(min=1), default=1024, show_default=True, help="Retain rows.")
@click.option(
    "--iterations",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Lanczos iterations timed per configuration.",
)
@click.option(
    "--reps",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Repetitions of the gradient / HVP timings (median).",
)
@click.option("--gpu", is_flag=True, help="One GPU per worker (nccl) instead of CPU slots (gloo).")
@click.option(
    "--from-json",
    "from_json",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Skip measuring: re-project from an earlier bench.json.",
)
@click.option(
    "--gpu-json",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="gpu_bench.json of benchmarks/gpu/gpu_bench.py: its HVP/gradient ratios feed the projection.",
)
@click.option("--no-project", is_flag=True, help="Measure only; no cost-model projection.")
def bench_command(
    workers: str,
    zero_text: str,
    out_dir: str,
    model: str,
    hvp: str,
    rows: int,
    iterations: int,
    reps: int,
    gpu: bool,
    from_json: str | None,
    gpu_json: str | None,
    no_project: bool,
) -> None:
    """Scale-out benchmark: HVP throughput, per-iteration compute / all-reduce / coordinator time, bytes
    per Lanczos iteration and efficiency over worker counts x ZeRO stages; then the cost model's
    projection to 8..1024 GPUs and 1B..70B parameters. Prints tables, writes JSON, a PNG and markdown."""
    from rich.console import Console

    from dist_unlearn.bench import projection_for, write_outputs
    from dist_unlearn.bench.report import (
        BENCH_COLUMNS,
        PROJECTION_COLUMNS,
        bench_rows,
        projection_rows,
        rich_table,
    )
    from dist_unlearn.errors import DistUnlearnError

    worker_counts = _int_list(workers, "--workers")
    stages = _int_list(zero_text, "--zero", range(0, 4))
    console = Console() if Console().is_terminal else Console(width=180)  # logs: keep the table readable
    command = shlex.join(
        [
            "dist-unlearn",
            "bench",
            "--workers",
            workers,
            "--zero",
            zero_text,
            "--model",
            model,
            "--hvp",
            hvp,
            "--rows",
            str(rows),
            "--iterations",
            str(iterations),
            "--reps",
            str(reps),
        ]
        + (["--gpu"] if gpu else [])
        + (["--from-json", from_json] if from_json else [])
        + (["--gpu-json", gpu_json] if gpu_json else [])
    )
    try:
        if from_json:
            with open(from_json) as f:
                bench = json.load(f)
        else:
            from dist_unlearn.bench.scaleout import run_bench

            bench = run_bench(
                worker_counts,
                stages,
                model=model,
                hvp=hvp,
                rows=rows,
                iterations=iterations,
                reps=reps,
                use_gpu=gpu,
                log=lambda msg: console.print(msg, style="dim"),
            )
            bench["command"] = command
        console.print(
            rich_table(
                f"Scale-out benchmark: {bench['model']} ({bench['num_params']:,} params), {bench['machine']}",
                BENCH_COLUMNS,
                bench_rows(bench),
            )
        )
        gpu_result = None
        if gpu_json:
            with open(gpu_json) as f:
                gpu_result = json.load(f)
        proj = projection_for(bench, gpu=gpu_result) if not no_project else None
        if proj:
            console.print(
                rich_table(
                    "Cost model: seconds per CureNewton outer step (ZeRO-3, FD HVP, H100)",
                    PROJECTION_COLUMNS,
                    projection_rows(proj["rows"]),
                )
            )
            paths = write_outputs(out_dir, bench, proj, command)
        else:
            from dist_unlearn.bench.report import write_json

            paths = {"bench": write_json(bench, f"{out_dir}/bench.json")}
    except DistUnlearnError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    failed = [r for r in bench["runs"] if not r.get("ok")]
    for r in failed:
        console.print(
            f"[red]failed[/red]: {r['workers']} worker(s), ZeRO-{r['zero_stage']}, {r['hvp']}: {r['error']}"
        )
    for kind, path in paths.items():
        click.echo(f"{kind}: {path}")
    if failed:
        raise SystemExit(1)
