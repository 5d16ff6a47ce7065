"""PNG plots of a results.json that answer their question at a glance.

- :func:`plot_metrics`: one panel per key metric, one dot per method, a dashed line at the retrained
  model's value (the target), the axis zoomed to where the values are, the better direction in the title.
- :func:`plot_update_norms`: ``|d|`` per step, Newton-type outer steps and first-order optimiser steps in
  separate panels (their x-axes count different things); ARC-rejected steps are separate markers, not part
  of the path.
- :func:`plot_spectrum`: Hessian spectral density estimates.

matplotlib's Agg canvas is used directly (no pyplot, no global backend), so this works headless.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

#: how each metric is judged: "higher", "lower", or "retrain" (closest to the retrained model is best)
BETTER = {
    "tow": "higher",
    "acc_retain": "retrain",
    "acc_forget": "retrain",
    "acc_test": "retrain",
    "js_forget": "lower",
    "mia_auc": "retrain",
    "mia_auc_gap": "lower",
    "forget_quality": "higher",
    "model_utility": "higher",
    "forget_truth_ratio": "retrain",
    "retain_Q_A_Prob": "retrain",
    "forget_Q_A_ROUGE": "retrain",
    "retain_Q_A_ROUGE": "retrain",
    "forget_ppl": "retrain",
    "retain_ppl": "retrain",
    "mia_min_k": "retrain",
    "privleak": "retrain",
    "param_distance": "lower",
    "update_norm": "retrain",
    "time_fraction_of_retrain": "lower",
}
DIRECTION_TEXT = {
    "higher": "higher is better",
    "lower": "lower is better",
    "retrain": "closer to retrained is better",
}
CURVATURE = ("cure_newton", "cure_newton_stochastic", "damped_newton", "pinv_newton")


def png_bytes(fig: Any) -> bytes:
    """The figure as PNG bytes (Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _zoom(values: list[float], log: bool) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if log:
        return lo / 1.5, hi * 1.5
    span = hi - lo
    pad = 0.12 * span if span > 0 else max(abs(hi) * 0.05, 1e-3)
    return lo - pad, hi + pad


def plot_metrics(methods: Mapping[str, Any], metrics: list[str]) -> bytes | None:
    """Dot plot per metric (methods on the y axis), retrained value as a dashed reference line; None when
    there is nothing to plot."""
    from matplotlib.figure import Figure

    if not metrics:
        return None
    names = list(methods)
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig = Figure(figsize=(4.3 * ncols, (0.9 + 0.28 * len(names)) * nrows + 0.5))
    ref = methods.get("retrain", {}).get("metrics", {})
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        values = [methods[n]["metrics"].get(metric) for n in names]
        shown = [v for v in values if v is not None and math.isfinite(v)]
        target = ref.get(metric)
        pool = shown + ([target] if target is not None else [])
        positive = [v for v in pool if v > 0]
        log = bool(pool) and min(pool) > 0 and max(positive) / min(positive) > 1e3
        for j, (n, v) in enumerate(zip(names, values, strict=True)):
            if v is None or not math.isfinite(v):
                ax.text(0.02, j, "n/a", transform=ax.get_yaxis_transform(), va="center", fontsize=7)
                continue
            style = {"marker": "D", "color": "0.35"} if n in ("original", "retrain") else {"marker": "o"}
            ax.plot([v], [j], ms=6, linestyle="none", **({"color": f"C{j % 10}"} | style))
        if target is not None:
            ax.axvline(target, color="k", linestyle="--", linewidth=1, label="retrained")
        if log:
            ax.set_xscale("log")
        if pool:
            ax.set_xlim(*_zoom(pool, log))
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names, fontsize=7)
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.grid(axis="x", alpha=0.3)
        better = DIRECTION_TEXT.get(BETTER.get(metric, ""), "")
        ax.set_title(f"{metric}" + (f" ({better})" if better else ""), fontsize=8)
        ax.set_xlabel(metric + (" (log scale)" if log else ""), fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle("Metrics per method (dashed line: retrained model, the target)", fontsize=9)
    fig.tight_layout()
    return png_bytes(fig)


def _is_newton(rec: Mapping[str, Any]) -> bool:
    method = (rec.get("stats") or {}).get("method")
    if method is not None:
        return method in CURVATURE
    return any((s.get("hvps") or 0) > 0 for s in rec.get("steps") or [] if isinstance(s, Mapping))


def _steps_panel(
    ax: Any, series: dict[str, tuple[int, list[Mapping[str, Any]]]], xlabel: str, title: str
) -> None:
    from matplotlib.ticker import MaxNLocator

    all_y = []
    for name, (color, steps) in series.items():
        ok = [(s.get("step", j), s["step_norm"]) for j, s in enumerate(steps) if s.get("accepted", True)]
        rej = [(s.get("step", j), s["step_norm"]) for j, s in enumerate(steps) if s.get("accepted") is False]
        if ok:
            ax.plot(*zip(*ok, strict=True), marker="o", ms=3, color=f"C{color}", label=name)
        if rej:
            ax.scatter(
                *zip(*rej, strict=True),
                marker="x",
                s=30,
                color=f"C{color}",
                zorder=3,
                label=f"{name}: rejected (ARC)",
            )
        all_y += [y for _, y in ok + rej]
    if all_y and all(y > 0 for y in all_y):
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("update norm |d| (log)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def plot_update_norms(methods: Mapping[str, Any]) -> bytes | None:
    """``step_norm`` per step per method: Newton outer steps and first-order steps in separate panels."""
    from matplotlib.figure import Figure

    newton: dict[str, tuple[int, list]] = {}
    first: dict[str, tuple[int, list]] = {}
    for i, (n, rec) in enumerate(methods.items()):
        steps = [
            s for s in rec.get("steps") or [] if isinstance(s, Mapping) and s.get("step_norm") is not None
        ]
        if steps:
            (newton if _is_newton(rec) else first)[n] = (i % 10, steps)
    panels = [p for p in (newton, first) if p]
    if not panels:
        return None
    fig = Figure(figsize=(6.0 * len(panels), 4.0))
    k = 1
    if newton:
        _steps_panel(
            fig.add_subplot(1, len(panels), k),
            newton,
            "outer step (each: a Krylov solve on the retain loss)",
            "Newton-type methods: update per outer step",
        )
        k += 1
    if first:
        _steps_panel(
            fig.add_subplot(1, len(panels), k),
            first,
            "optimiser step (one mini-batch)",
            "First-order methods: update per mini-batch step",
        )
    fig.tight_layout()
    return png_bytes(fig)


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
    ax.set_xlabel("eigenvalue of the retain-loss Hessian")
    ax.set_ylabel("density")
    ax.set_title("Hessian spectral density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)
