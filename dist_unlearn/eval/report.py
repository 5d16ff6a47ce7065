"""Markdown report with PNG plots from a ``results.json`` (schema in :mod:`dist_unlearn.eval.results`).

A record an auditor can read: what was forgotten (count, id file, sha256), the verdict per method (against
the retrained oracle and against unseen data), cost next to retraining, every metric with its definition,
the values after the last update, where it ran (versions, commit, machine, time) and the hashes of the saved
weights. The configuration goes into ``config.yaml`` beside it, not into the body.

Files written into ``out_dir`` (each atomically; report.md last, so it never points at a missing plot):

- ``metrics.png``, ``update_norms.png``, ``hessian_spectrum.png`` (see :mod:`dist_unlearn.eval.plots`);
- ``config.yaml``: the experiment config, when the results carry one (the appendix);
- ``report.md``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dist_unlearn.errors import DataError
from dist_unlearn.eval.plots import plot_metrics, plot_spectrum, plot_update_norms
from dist_unlearn.eval.report_sections import (
    _fmt,
    _table,
    cost_cells,
    definition_lines,
    header_lines,
    provenance_lines,
    verdict_lines,
    weights_lines,
)
from dist_unlearn.eval.results import atomic_write_bytes, load_results, to_jsonable, validate_results

__all__ = [
    "REPORT_FILES",
    "plot_metrics",
    "plot_spectrum",
    "plot_update_norms",
    "render_markdown",
    "write_report",
]

#: every name :func:`write_report` may write (for ``dist_unlearn.output``'s ``will_write``)
REPORT_FILES = ("report.md", "metrics.png", "update_norms.png", "hessian_spectrum.png", "config.yaml")

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
)  # time_fraction_of_retrain: shown as "wall % retrain" beside the cost
RESOURCE_COLUMNS = (("wall_time_s", "wall time (s)"), ("peak_rss_bytes", "peak RSS (MiB)"))


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


def _resource_cell(rec: Mapping[str, Any], key: str) -> str:
    value = (rec.get("resources") or {}).get(key)
    if key.endswith("_bytes") and isinstance(value, int | float):
        return f"{value / 2**20:.1f}"
    return _fmt(value)


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


def _final(rec: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """(retain loss at the start, retain loss after the last update, |g| after it) of one method.

    The end values come from the method's stats (measured at the returned weights); a step record's
    ``loss``/``grad_norm`` are taken *before* that step's update, so only the first one is a start value.
    """
    steps = rec.get("steps") or []
    stats = rec.get("stats") or {}
    start = steps[0].get("loss") if steps else None
    end, gend = stats.get("final_loss"), stats.get("final_grad_norm")
    if end is None and steps:  # older results: the last accepted trial loss is the value after the update
        last = next((s for s in reversed(steps) if s.get("accepted", True)), None)
        end = (last or {}).get("trial_loss")
    return start, end, gend


def _steps_lines(methods: Mapping[str, Any]) -> list[str]:
    stepped = [n for n in methods if methods[n].get("steps")]
    if not stepped:
        return []
    rows = []
    for n in stepped:
        steps = methods[n]["steps"]
        norms = [s.get("step_norm") for s in steps if s.get("step_norm") is not None]
        hvps = [s.get("hvps") for s in steps if isinstance(s.get("hvps"), int | float)]
        start, end, gend = _final(methods[n])
        worse = start is not None and end is not None and end > start
        rows.append(
            [
                n,
                str(len(steps)),
                str(sum(1 for s in steps if s.get("accepted", True))),
                _fmt(sum(hvps)) if hvps else "-",
                _fmt(max(norms)) if norms else "-",
                _fmt(start),
                _fmt(end) + (" (worse)" if worse else ""),
                _fmt(gend),
                str((methods[n].get("stats") or {}).get("stop_reason") or "-"),
            ]
        )
    header = ["method", "steps", "accepted", "HVPs", "max step norm", "loss at start", "loss at end"]
    header += ["|g| at end", "stop reason"]
    return [
        "## Outer steps",
        "",
        "Loss is the objective each method minimises (curvature methods: the retain loss); *at end* is "
        "measured at the returned weights, after the last update.",
        "",
        *_table(header, rows),
        "",
    ]


def render_markdown(results: Mapping[str, Any], figures: Mapping[str, str]) -> str:
    """The report text; ``figures`` maps a figure key (metrics, update_norms, hessian_spectrum, config) to
    a file name."""
    methods = results["methods"]
    names = list(methods)
    key = _key_metrics(methods)
    lines = header_lines(results, figures.get("config"))
    lines += verdict_lines(results)
    lines += ["## Summary", ""]
    cost_header, cost_rows = cost_cells(methods)
    header = ["method", *key, *cost_header, *(label for _, label in RESOURCE_COLUMNS)]
    rows = [
        [
            n,
            *(_fmt(methods[n]["metrics"].get(m)) for m in key),
            *cost_rows[n],
            *(_resource_cell(methods[n], k) for k, _ in RESOURCE_COLUMNS),
        ]
        for n in names
    ]
    lines += _table(header, rows) + [""]
    if "metrics" in figures:
        lines += [f"![metrics per method]({figures['metrics']})", ""]
    lines += weights_lines(results)
    lines += ["## All metrics", ""]
    lines += _table(
        ["metric", *names],
        [[m, *(_fmt(methods[n]["metrics"].get(m)) for n in names)] for m in _metric_names(methods)],
    )
    lines.append("")
    lines += _steps_lines(methods)
    if "update_norms" in figures:
        lines += [f"![update norms per outer step]({figures['update_norms']})", ""]
    lines += _rounds_lines(results.get("rounds"))
    if "hessian_spectrum" in figures:
        lines += [
            "## Hessian spectrum",
            "",
            f"![Hessian spectral density]({figures['hessian_spectrum']})",
            "",
        ]
    lines += definition_lines(_metric_names(methods))
    lines += provenance_lines(results.get("provenance"))
    return "\n".join(lines)


def write_report(results: str | os.PathLike | Mapping[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write ``report.md``, its PNG plots and the config appendix for a results dict or a
    ``results.json`` path (file or dir).

    Callers that write into a user-visible directory go through :class:`dist_unlearn.output.OutputDir`
    (``dist-unlearn report`` and the pipeline do): this function writes into ``out_dir`` directly.

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
    config = (
        (data.get("experiment") or {}).get("config") if isinstance(data.get("experiment"), Mapping) else None
    )
    if isinstance(config, Mapping):
        import yaml

        atomic_write_bytes(out / "config.yaml", yaml.safe_dump(dict(config), sort_keys=False).encode())
        figures["config"] = "config.yaml"
    return atomic_write_bytes(out / "report.md", render_markdown(data, figures).encode("utf-8"))


def _spectra(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    spectrum = results.get("hessian_spectrum")
    if spectrum is None:
        return []
    return [spectrum] if isinstance(spectrum, Mapping) else list(spectrum)
