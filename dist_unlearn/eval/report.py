"""Markdown report with PNG plots from a ``results.json`` (schema in :mod:`dist_unlearn.eval.results`).

Files written into ``out_dir`` (each atomically; report.md last, so it never points at a missing plot):

- ``metrics.png``: one bar panel per key metric, one bar per method;
- ``update_norms.png``: ``|d|`` per outer step per method (log scale), when any method has steps;
- ``hessian_spectrum.png``: spectral density estimates, when ``hessian_spectrum`` is present;
- ``report.md``: summary table, plots, every metric, per-method step and resource summary.

Plots use matplotlib's Agg canvas directly (no pyplot, no global backend switch), so this works headless
and in threads.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dist_unlearn.errors import DataError
from dist_unlearn.eval.results import atomic_write_bytes, load_results, to_jsonable, validate_results

# Metrics shown in the summary table and bar chart, in this order, when present.
KEY_METRICS = (
    "tow",
    "acc_retain",
    "acc_forget",
    "acc_test",
    "js_forget",
    "mia_auc",
    "forget_quality",
    "model_utility",
    "forget_truth_ratio",
    "retain_Q_A_Prob",
    "forget_Q_A_ROUGE",
    "retain_Q_A_ROUGE",
    "forget_ppl",
    "retain_ppl",
    "mia_min_k",
    "privleak",
    "param_distance",
    "update_norm",
    "time_fraction_of_retrain",
)
RESOURCE_COLUMNS = (("wall_time_s", "wall time (s)"), ("peak_rss_bytes", "peak RSS (MiB)"))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _metric_names(methods: Mapping[str, Any]) -> list[str]:
    seen: dict[str, None] = {}
    for rec in methods.values():
        for k, v in rec["metrics"].items():
            if v is not None:
                seen.setdefault(k, None)
    return list(seen)


def _key_metrics(methods: Mapping[str, Any]) -> list[str]:
    present = _metric_names(methods)
    keys = [m for m in KEY_METRICS if m in present]
    return keys or present[:12]


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def plot_metrics(methods: Mapping[str, Any], metrics: list[str]) -> bytes | None:
    """Bar chart, one panel per metric, one bar per method; None when there is nothing to plot."""
    from matplotlib.figure import Figure

    if not metrics:
        return None
    names = list(methods)
    ncols = min(4, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig = Figure(figsize=(3.2 * ncols, 2.8 * nrows + 0.6 * bool(len(names) > 3)))
    colors = [f"C{i % 10}" for i in range(len(names))]
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        values = [methods[n]["metrics"].get(metric) for n in names]
        positive = [v for v in values if v is not None and v > 0]
        log = (
            bool(positive)
            and min(v for v in values if v is not None) >= 0
            and max(positive) / min(positive) > 1e3
        )
        # log scale when values span > 3 decades (zeros then drawn as no bar); missing values: no bar
        heights = [math.nan if v is None or (log and v <= 0) else v for v in values]
        ax.bar(range(len(names)), heights, color=colors)
        ax.set_xlim(-0.6, len(names) - 0.4)
        if log:
            ax.set_yscale("log")
        elif all(v >= 0 for v in values if v is not None):
            ax.set_ylim(bottom=0)
        ax.set_title(metric, fontsize=9)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return _png(fig)


def plot_update_norms(methods: Mapping[str, Any]) -> bytes | None:
    """``step_norm`` per outer step per method (log y); rejected steps drawn as crosses."""
    from matplotlib.figure import Figure

    series = {
        n: [s for s in rec.get("steps") or [] if isinstance(s, Mapping) and s.get("step_norm") is not None]
        for n, rec in methods.items()
    }
    series = {n: s for n, s in series.items() if s}
    if not series:
        return None
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for i, (name, steps) in enumerate(series.items()):
        xs = [s.get("step", j) for j, s in enumerate(steps)]
        ys = [s["step_norm"] for s in steps]
        ax.plot(xs, ys, marker="o", ms=3, color=f"C{i % 10}", label=name)
        rej = [(x, y) for x, y, s in zip(xs, ys, steps, strict=True) if s.get("accepted") is False]
        if rej:
            ax.scatter(*zip(*rej, strict=True), marker="x", color=f"C{i % 10}", zorder=3)
    if all(y > 0 for s in series.values() for y in (t["step_norm"] for t in s)):
        ax.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("outer step")
    ax.set_ylabel("update norm |d|")
    ax.set_title("Update norm per outer step (x: rejected step)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _spectra(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    spectrum = results.get("hessian_spectrum")
    if spectrum is None:
        return []
    return [spectrum] if isinstance(spectrum, Mapping) else list(spectrum)


def plot_spectrum(spectra: list[Mapping[str, Any]]) -> bytes | None:
    """Hessian spectral density estimate(s) (SLQ), density on a log scale when positive."""
    from matplotlib.figure import Figure

    if not spectra:
        return None
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for i, s in enumerate(spectra):
        ax.plot(s["grid"], s["density"], color=f"C{i % 10}", label=s.get("label", f"spectrum {i}"))
    if all(d > 0 for s in spectra for d in s["density"]):
        ax.set_yscale("log")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title("Hessian spectral density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _resource_cell(rec: Mapping[str, Any], key: str) -> str:
    value = (rec.get("resources") or {}).get(key)
    if key.endswith("_bytes") and isinstance(value, int | float):
        return f"{value / 2**20:.1f}"
    return _fmt(value)


def _experiment_lines(experiment: Any) -> list[str]:
    if not experiment:
        return []
    lines = ["## Experiment", ""]
    if isinstance(experiment, Mapping):
        flat = {k: v for k, v in experiment.items() if not isinstance(v, Mapping | list)}
        nested = {k: v for k, v in experiment.items() if k not in flat}
        lines += [f"- **{k}**: {_fmt(v)}" for k, v in flat.items()]
        if nested:
            lines += ["", "```json", json.dumps(nested, indent=1)[:4000], "```"]
    else:
        lines.append(str(experiment))
    return lines + [""]


def _rounds_lines(rounds: Any) -> list[str]:
    """Sequential unlearning: the first key metric of each method after each round."""
    if not isinstance(rounds, list) or len(rounds) < 2:
        return []
    per_round = [r.get("methods") or {} for r in rounds if isinstance(r, Mapping)]
    names = list(dict.fromkeys(n for m in per_round for n in m))
    metric = next(
        (
            k
            for k in KEY_METRICS
            if any(k in (m.get(n) or {}).get("metrics", {}) for m in per_round for n in m)
        ),
        None,
    )
    if metric is None:
        return []
    rows = [
        [n, *(_fmt(((m.get(n) or {}).get("metrics") or {}).get(metric)) for m in per_round)] for n in names
    ]
    header = ["method", *(f"round {i + 1}" for i in range(len(per_round)))]
    return [f"## Sequential rounds ({metric})", "", *_table(header, rows), ""]


def render_markdown(results: Mapping[str, Any], figures: Mapping[str, str]) -> str:
    """The report text; ``figures`` maps a figure key (metrics, update_norms, hessian_spectrum) to a file."""
    methods = results["methods"]
    names = list(methods)
    key = _key_metrics(methods)
    lines = ["# dist_unlearn report", ""]
    if results.get("created_utc"):
        lines += [f"Results created {results['created_utc']} (schema {results.get('schema_version')}).", ""]
    lines += _experiment_lines(results.get("experiment"))
    lines += ["## Summary", ""]
    header = ["method", *key, *(label for _, label in RESOURCE_COLUMNS)]
    rows = [
        [
            n,
            *(_fmt(methods[n]["metrics"].get(m)) for m in key),
            *(_resource_cell(methods[n], k) for k, _ in RESOURCE_COLUMNS),
        ]
        for n in names
    ]
    lines += _table(header, rows) + [""]
    if "metrics" in figures:
        lines += [f"![metrics per method]({figures['metrics']})", ""]
    lines += ["## All metrics", ""]
    lines += _table(
        ["metric", *names],
        [[m, *(_fmt(methods[n]["metrics"].get(m)) for n in names)] for m in _metric_names(methods)],
    )
    lines.append("")
    stepped = [n for n in names if methods[n].get("steps")]
    if stepped:
        lines += ["## Outer steps", ""]
        rows = []
        for n in stepped:
            steps = methods[n]["steps"]
            norms = [s.get("step_norm") for s in steps if s.get("step_norm") is not None]
            hvps = [s.get("hvps") for s in steps if isinstance(s.get("hvps"), int | float)]
            rows.append(
                [
                    n,
                    str(len(steps)),
                    str(sum(1 for s in steps if s.get("accepted", True))),
                    _fmt(sum(hvps)) if hvps else "-",
                    _fmt(max(norms)) if norms else "-",
                    _fmt(steps[-1].get("grad_norm")),
                    _fmt(steps[-1].get("loss")),
                ]
            )
        lines += _table(
            ["method", "steps", "accepted", "HVPs", "max step norm", "final grad norm", "final loss"], rows
        ) + [""]
    lines += _rounds_lines(results.get("rounds"))
    if "update_norms" in figures:
        lines += [f"![update norms per outer step]({figures['update_norms']})", ""]
    if "hessian_spectrum" in figures:
        lines += [
            "## Hessian spectrum",
            "",
            f"![Hessian spectral density]({figures['hessian_spectrum']})",
            "",
        ]
    return "\n".join(lines)


def write_report(results: str | os.PathLike | Mapping[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write ``report.md`` and its PNG plots for a results dict or a ``results.json`` path (file or dir).

    Args:
        results: the results (schema of :mod:`dist_unlearn.eval.results`) or where to read them.
        out_dir: output directory (created if needed).

    Returns:
        The path of ``report.md``.

    Raises:
        DataError: the results do not follow the schema.
        OutputError: a file could not be written (files already there are left intact).
    """
    if isinstance(results, str | os.PathLike):
        data = load_results(results)
    elif isinstance(results, Mapping):
        data = to_jsonable(results)
        validate_results(data)
    else:
        raise DataError(f"results must be a dict or a path to results.json, got {type(results).__name__}.")
    out = Path(out_dir)
    methods = data["methods"]
    pngs = {
        "metrics": ("metrics.png", plot_metrics(methods, _key_metrics(methods))),
        "update_norms": ("update_norms.png", plot_update_norms(methods)),
        "hessian_spectrum": ("hessian_spectrum.png", plot_spectrum(_spectra(data))),
    }
    figures = {}
    for key, (name, png) in pngs.items():
        if png is not None:
            atomic_write_bytes(out / name, png)
            figures[key] = name
    return atomic_write_bytes(out / "report.md", render_markdown(data, figures).encode("utf-8"))
