"""`dist-unlearn bench`: the scale-out benchmark (worker counts x ZeRO stages) and the cost model."""

from __future__ import annotations

import json
import os
import shlex
from typing import Any

import click

from dist_unlearn.cli import cli, verbose_option
from dist_unlearn.errors import DataError

#: what a bench run writes into --out
BENCH_FILES = ("bench.json", "projection.json", "bench.png", "bench.md")
#: fields of bench.json the tables and the projection read
BENCH_KEYS = ("model", "num_params", "machine", "runs")
RUN_KEYS = ("workers", "zero_stage", "hvp", "ok")


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} {path!r} is not a text JSON file ({exc})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{what} {path!r} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise DataError(f"{what} {path!r} cannot be read: {exc}") from None


def load_bench_json(path: str) -> dict[str, Any]:
    """Read a bench.json written by ``dist-unlearn bench`` (for ``--from-json``).

    Raises:
        DataError: not JSON, not an object, or missing the fields the tables and projection need.
    """
    bench = _read_json(path, "--from-json")
    if not isinstance(bench, dict):
        raise DataError(f"--from-json {path!r} holds a JSON {type(bench).__name__}, not a bench.json object")
    missing = [k for k in BENCH_KEYS if k not in bench]
    if missing:
        raise DataError(
            f"--from-json {path!r} is not a bench.json written by dist-unlearn bench: missing {missing} "
            f"(expected keys {list(BENCH_KEYS)})"
        )
    if not isinstance(bench["runs"], list) or not bench["runs"]:
        raise DataError(f"--from-json {path!r}: 'runs' must be a non-empty list of measured configurations")
    for i, run in enumerate(bench["runs"]):
        lost = [k for k in RUN_KEYS if not isinstance(run, dict) or k not in run]
        if lost:
            raise DataError(f"--from-json {path!r}: runs[{i}] lacks {lost}")
    return bench


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
@verbose_option
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
@click.option(
    "--overwrite", is_flag=True, help="Replace the outputs of an earlier bench in --out (never other files)."
)
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
    overwrite: bool,
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
    from dist_unlearn.output import OutputDir, check_output_dir

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
        check_output_dir(out_dir, overwrite=overwrite, will_write=BENCH_FILES)
        if from_json:
            bench = load_bench_json(from_json)
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
        try:
            table = rich_table(
                f"Scale-out benchmark: {bench['model']} ({bench['num_params']:,} params), {bench['machine']}",
                BENCH_COLUMNS,
                bench_rows(bench),
            )
            gpu_result = _read_json(gpu_json, "--gpu-json") if gpu_json else None
            if gpu_result is not None and not isinstance(gpu_result, dict):
                raise DataError(f"--gpu-json {gpu_json!r} must hold a JSON object (gpu_bench.json)")
            proj = projection_for(bench, gpu=gpu_result) if not no_project else None
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            if not (from_json or gpu_json):
                raise
            raise DataError(
                f"{from_json or gpu_json!r} does not have the fields this version of dist-unlearn bench "
                f"writes ({type(exc).__name__}: {exc}); re-run the benchmark or give a file it wrote"
            ) from None
        console.print(table)
        if proj:
            console.print(
                rich_table(
                    "Cost model: seconds per CureNewton outer step (ZeRO-3, FD HVP, H100)",
                    PROJECTION_COLUMNS,
                    projection_rows(proj["rows"]),
                )
            )
        with OutputDir(out_dir, overwrite=overwrite, command=command, will_write=BENCH_FILES) as od:
            if proj:
                staged = write_outputs(str(od.stage), bench, proj, command)
            else:
                from dist_unlearn.bench.report import write_json

                staged = {"bench": write_json(bench, str(od.stage / "bench.json"))}
            od.commit()
        paths = {k: str(od.path / os.path.relpath(v, od.stage)) for k, v in staged.items()}
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
