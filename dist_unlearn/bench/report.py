"""Tables, plot, JSON and markdown of the scale-out benchmark and the cost-model projection."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from dist_unlearn.errors import OutputError


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def bench_rows(bench: dict[str, Any]) -> list[list[str]]:
    """One row per configuration: the columns of :func:`BENCH_COLUMNS`."""
    rows = []
    for r in bench["runs"]:
        if not r.get("ok"):
            rows.append(
                [str(r["workers"]), str(r["zero_stage"]), r["hvp"], "failed: " + r.get("error", "")[:60]]
                + [""] * (len(BENCH_COLUMNS) - 4)
            )
            continue
        rows.append(
            [
                str(r["workers"]),
                str(r["zero_stage"]),
                r["hvp"],
                f"{r['grad_s'] * 1e3:.1f}",
                f"{r['hvp_s'] * 1e3:.1f}",
                f"{r['hvp_over_grad']:.2f}",
                f"{r['hvps_per_s']:.1f}",
                f"{r['hvp_tokens_per_s']:.0f}",
                f"{r['iteration_s'] * 1e3:.1f}",
                f"{r['iteration_compute_s'] * 1e3:.1f}",
                f"{r['iteration_allreduce_s'] * 1e3:.1f}",
                f"{r['iteration_coordinator_s'] * 1e3:.1f}",
                f"{r['calls_per_iteration']:.1f}",
                f"{100 * r.get('coordinator_share', 0.0):.1f}",
                f"{r['coordinator_bytes_per_iteration']:.0f}",
                _fmt(r.get("hvp_efficiency"), ".2f"),
                _fmt(r.get("iteration_efficiency"), ".2f"),
            ]
        )
    return rows


BENCH_COLUMNS = [
    "workers",
    "ZeRO",
    "HVP",
    "grad ms",
    "HVP ms",
    "HVP/grad",
    "HVP/s",
    "tokens/s",
    "iter ms",
    "compute",
    "all-reduce",
    "coord.",
    "calls/iter",
    "coord. %",
    "coord B/iter",
    "E(HVP)",
    "E(iter)",
]
PROJECTION_COLUMNS = [
    "model",
    "GPUs",
    "s/outer step",
    "compute s",
    "comm s",
    "coord s",
    "GB/GPU",
    "efficiency",
]


def projection_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for r in rows:
        out.append(
            [
                r["model"],
                str(r["gpus"]),
                f"{r['total_s']:.1f}",
                f"{r['compute_s']:.1f}",
                f"{r['comm_s']:.1f}",
                f"{r['coordinator_s']:.2f}",
                f"{r['memory_per_gpu_bytes'] / 1e9:.0f}" + ("" if r["fits"] else " OOM"),
                _fmt(r["efficiency"], ".2f"),
            ]
        )
    return out


def pivot_markdown(rows: list[dict[str, Any]]) -> str:
    """Models x GPU counts: "seconds per outer step (efficiency)", or OOM where the model does not fit."""
    gpus = sorted({r["gpus"] for r in rows})
    lines = ["| model | " + " | ".join(f"{g} GPUs" for g in gpus) + " |", "|---|" + "---|" * len(gpus)]
    for model in dict.fromkeys(r["model"] for r in rows):
        cells = []
        for g in gpus:
            r = next(r for r in rows if r["model"] == model and r["gpus"] == g)
            cells.append("OOM" if not r["fits"] else f"{r['total_s']:.0f} s ({r['efficiency']:.2f})")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rich_table(title: str, columns: list[str], rows: list[list[str]]):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i < 3 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plot(bench: dict[str, Any], projection: list[dict[str, Any]] | None, path: str) -> str:
    """PNG: HVP throughput vs workers, per-iteration breakdown, projected scaling efficiency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in bench["runs"] if r.get("ok")]
    ncols = 3 if projection else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 4.2))
    ax = axes[0]
    for key in sorted({(r["zero_stage"], r["hvp"]) for r in runs}):
        pts = sorted(
            (r["workers"], r["hvp_tokens_per_s"]) for r in runs if (r["zero_stage"], r["hvp"]) == key
        )
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"ZeRO-{key[0]} {key[1]}")
    ax.set_xticks(sorted({r["workers"] for r in runs}))
    ax.set_yscale("log")
    ax.set_xlabel("workers")
    ax.set_ylabel("HVP throughput (retain tokens / s)")
    ax.set_title(f"HVP throughput ({bench['model']}, {bench['num_params']:,} params)")
    ax.legend(fontsize=8)
    ax = axes[1]
    labels = [f"{r['workers']}w Z{r['zero_stage']}\n{r['hvp']}" for r in runs]
    bottom = [0.0] * len(runs)
    for key, name in (
        ("iteration_compute_s", "compute"),
        ("iteration_allreduce_s", "all-reduce"),
        ("iteration_coordinator_s", "coordinator"),
    ):
        vals = [r[key] * 1e3 for r in runs]
        ax.bar(labels, vals, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_ylabel("ms per Lanczos iteration")
    ax.set_title("Per-iteration breakdown (measured)")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=8)
    if projection:
        ax = axes[2]
        for model in dict.fromkeys(r["model"] for r in projection):
            pts = [
                (r["gpus"], r["efficiency"]) for r in projection if r["model"] == model and r["efficiency"]
            ]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=model)
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("GPUs (H100)")
        ax.set_ylabel("scaling efficiency vs smallest fitting count")
        ax.set_title("Cost model: scaling efficiency per outer step (projected)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    _atomic(path, lambda f: fig.savefig(f, dpi=110, format="png"), binary=True)
    plt.close(fig)
    return path


def _atomic(path: str, write, binary: bool = False) -> None:
    d = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write {path!r}: {e}") from e


def write_json(obj: Any, path: str) -> str:
    _atomic(path, lambda f: json.dump(obj, f, indent=2, default=float))
    return path


def write_text(text: str, path: str) -> str:
    _atomic(path, lambda f: f.write(text))
    return path
