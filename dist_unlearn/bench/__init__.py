"""Scale-out benchmark of the distributed engine and the cost model fed by it (``dist-unlearn bench``).

- :mod:`dist_unlearn.bench.scaleout`: measure worker counts x ZeRO stages (HVP throughput, per-iteration
  compute / all-reduce / coordinator, bytes per Lanczos iteration, efficiency).
- :mod:`dist_unlearn.bench.costmodel`: project time per outer step and scaling efficiency to 8..1024 GPUs
  and 1B..70B parameters from those measurements plus documented hardware assumptions.
- :mod:`dist_unlearn.bench.report`: tables, JSON, PNG plot, markdown.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

from dist_unlearn.bench.costmodel import (
    GPU_COUNTS,
    MODEL_SIZES,
    CostModel,
    Hardware,
    Measured,
    Workload,
    measured_from_bench,
    project,
)

__all__ = [
    "GPU_COUNTS",
    "MODEL_SIZES",
    "CostModel",
    "Hardware",
    "Measured",
    "Workload",
    "measured_from_bench",
    "project",
    "projection_for",
    "summary_markdown",
    "write_outputs",
]

PROJECTED_WORKLOAD: dict[str, Any] = {
    "tokens_grad": 2.0**20,
    "tokens_hvp": 2.0**20,
    "lanczos_iterations": 20,
    "zero_stage": 3,
    "hvp": "fd",
}
"""The projected job: ~1M retain tokens per gradient and per HVP sample, 20 Lanczos iterations, ZeRO-3, FD."""


def projection_for(
    bench: dict[str, Any] | None,
    hardware: Hardware | None = None,
    gpu: dict[str, Any] | None = None,
    **workload: Any,
) -> dict[str, Any]:
    """Cost-model projection (ZeRO-3 FD, and ZeRO-3 FD with ZeRO++ hpZ) fed by the benchmarks' results
    (``bench``: ``dist-unlearn bench`` JSON; ``gpu``: ``benchmarks/gpu/gpu_bench.py`` JSON)."""
    measured = measured_from_bench(bench or {}, gpu=gpu)
    model = CostModel(hardware, measured)
    spec = {**PROJECTED_WORKLOAD, **workload}
    return {
        "hardware": asdict(model.hw),
        "measured": asdict(measured),
        "workload": spec,
        "rows": project(model, **spec),
        "rows_hpz": project(model, **{**spec, "hpz": True}),
    }


def summary_markdown(bench: dict[str, Any] | None, proj: dict[str, Any], command: str) -> str:
    """The markdown block for benchmarks/RESULTS.md: measurements, the model's inputs and its projection."""
    from dist_unlearn.bench.report import (
        BENCH_COLUMNS,
        PROJECTION_COLUMNS,
        bench_rows,
        markdown_table,
        pivot_markdown,
        projection_rows,
    )

    m, hw, w = proj["measured"], proj["hardware"], proj["workload"]
    out = []
    if bench:
        out += [
            f"Measured {bench['date']} on {bench['machine']}; `{bench.get('command', command)}`.",
            f"Workload: {bench['model']} ({bench['num_params']:,} parameters), {bench['rows']} retain rows "
            f"x {bench['tokens_per_row']} token(s), {bench['iterations']} Lanczos iterations, median of "
            f"{bench['reps']} repetitions. Times in ms; E = T(1) / (N T(N)).",
            "",
            markdown_table(BENCH_COLUMNS, bench_rows(bench)),
            "",
        ]
    ratios = ", ".join(f"{k} {v:.2f}" for k, v in m["hvp_over_grad"].items())
    out += [
        "Cost-model inputs from the measurements (`measured_from_bench`): "
        f"HVP/gradient compute ratio {ratios}; coordinator overhead per driver round trip "
        f"{m['coord_s_per_call'] * 1e3:.2f} ms + {m['coord_s_per_call_per_worker'] * 1e3:.3f} ms per worker; "
        f"{m['calls_per_iteration']:.1f} round trips and {m['scalar_allreduces_per_iteration']:.1f} scalar "
        f"all-reduces per Lanczos iteration; {m['coordinator_bytes_per_iteration']:.0f} bytes received by "
        f"the coordinator per iteration and per worker (independent of model size). Source: {m['source']}.",
        "",
        f"Hardware assumptions: {hw['name']}, {hw['peak_flops'] / 1e12:.0f} TFLOP/s bf16 peak at "
        f"{hw['mfu']:.0%} MFU, {hw['gpus_per_node']} GPUs/node, ring bus bandwidth "
        f"{hw['intra_node_bandwidth'] / 1e9:.0f} GB/s inside a node and "
        f"{hw['inter_node_bandwidth'] / 1e9:.0f} GB/s per GPU across nodes, "
        f"{hw['latency_s'] * 1e6:.0f} us per ring step, "
        f"{hw['memory_bytes'] / 1e9:.0f} GB HBM; no compute/communication overlap. Job: "
        f"{w['tokens_grad']:.0f} retain tokens per gradient and per HVP, {w['lanczos_iterations']} Lanczos "
        f"iterations (basis stored), ZeRO-{w['zero_stage']}, {w['hvp']} HVP, fp32 Krylov vectors and master "
        "weights, 8 GB of checkpointed activations per GPU. Efficiency is relative to the smallest GPU count "
        "at which the model fits (OOM rows do not fit in 80 GB).",
        "",
        "Projected time per outer step (scaling efficiency), ZeRO-3, FD HVP:",
        "",
        pivot_markdown(proj["rows"]),
        "",
        "Same with ZeRO++ hpZ (a per-node bf16 weight partition keeps weight all-gathers on NVLink):",
        "",
        pivot_markdown(proj["rows_hpz"]),
        "",
        "Breakdown of the ZeRO-3 projection (seconds per outer step):",
        "",
        markdown_table(PROJECTION_COLUMNS, projection_rows(proj["rows"])),
    ]
    return "\n".join(out) + "\n"


def write_outputs(
    out_dir: str, bench: dict[str, Any] | None, proj: dict[str, Any], command: str
) -> dict[str, str]:
    """bench.json, projection.json, bench.png and bench.md in ``out_dir`` (each written atomically)."""
    from dist_unlearn.bench.report import plot, write_json, write_text

    paths = {}
    if bench:
        paths["bench"] = write_json(bench, os.path.join(out_dir, "bench.json"))
        paths["plot"] = plot(bench, proj["rows"], os.path.join(out_dir, "bench.png"))
    paths["projection"] = write_json(proj, os.path.join(out_dir, "projection.json"))
    paths["markdown"] = write_text(summary_markdown(bench, proj, command), os.path.join(out_dir, "bench.md"))
    return paths
