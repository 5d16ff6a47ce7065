"""The audit's subject plot: every subject against the distribution of data never seen, at a glance.

One line per subject (the request's order; at most :data:`MAX_SUBJECTS`, the furthest from 0.5 first when
there are more). The x axis is the position among the audit's unseen rows under the primary test (LOSS):
0 = fitted better than every unseen row, 0.5 = like them, 1 = worse than every one. Each line shows the
subject's central band (shaded), its rows (small dots), its mean quantile after unlearning (large marker,
coloured by status) and before (hollow marker, arrow to after). The bottom line shows where subjects the
model never saw fall (each unseen subject against the others): the spread the band is calibrated on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dist_unlearn.eval.plots import png_bytes

MAX_SUBJECTS = 40
COLOURS = {
    "forgotten": "#2ca02c",
    "recognisable": "#1f77b4",
    "conspicuous": "#d62728",
    "undecided": "#7f7f7f",
}


def plot_subjects(verdict: dict[str, Any], path: str | Path) -> Path | None:
    """Write the subject plot of a per-subject verdict record (:func:`dist_unlearn.job.judge.job_verdict`);
    None (nothing written) when the verdict has no subjects."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    subjects = verdict.get("subjects")
    if not subjects:
        return None
    primary = verdict["tests"][0]
    shown = subjects
    if len(subjects) > MAX_SUBJECTS:
        shown = sorted(subjects, key=lambda r: -abs(r["quantile"] - 0.5))[:MAX_SUBJECTS]
    if verdict.get("pooled"):
        shown = [*shown, verdict["pooled"]]
    reference = verdict.get("unseen_reference") or []
    n = len(shown) + (1 if reference else 0)
    fig = Figure(figsize=(8.5, 1.4 + 0.38 * n))
    ax = fig.add_subplot(1, 1, 1)
    for y, r in enumerate(shown):
        lo, hi = r["band"]
        ax.barh(y, hi - lo, left=lo, height=0.6, color="#dddddd", zorder=0)
        rows = r["tests"][primary].get("row_quantiles") or []
        ax.scatter(rows, [y] * len(rows), s=9, color="#555555", zorder=2)
        before = r.get("before")
        colour = COLOURS.get(r["status"], "k")
        if before is not None:
            ax.annotate(
                "",
                xy=(r["quantile"], y),
                xytext=(before["quantile"], y),
                arrowprops={"arrowstyle": "->", "color": "#999999", "lw": 1},
                zorder=1,
            )
            ax.scatter([before["quantile"]], [y], s=60, facecolors="none", edgecolors="#666666", zorder=3)
        ax.scatter([r["quantile"]], [y], s=90, color=colour, edgecolors="k", zorder=4)
    labels = [f"{r['subject']} ({r['n_rows']} rows, {r['status']})" for r in shown]
    if reference:
        y = len(shown)
        ax.scatter(
            [x["quantile"] for x in reference], [y] * len(reference), s=30, color="#bbbbbb", marker="s"
        )
        labels.append(f"never-seen subjects ({len(reference)})")
    ax.axvline(0.5, color="k", linestyle="--", linewidth=0.8)
    ax.set_yticks(range(n))
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlim(-0.03, 1.03)
    ax.set_xlabel(
        "position among the audit's unseen rows (LOSS): 0 = fitted better than every unseen row, "
        "1 = worse than every one",
        fontsize=8,
    )
    handles = [
        Line2D([], [], marker="o", linestyle="none", color=c, markeredgecolor="k", label=s)
        for s, c in COLOURS.items()
    ]
    handles += [
        Line2D([], [], marker="o", linestyle="none", markerfacecolor="none", color="#666666", label="before"),
        Line2D(
            [], [], marker="s", linestyle="none", color="#dddddd", markersize=10, label="band (never seen)"
        ),
    ]
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.6 / n), ncol=6)
    ax.set_title(
        f"Does each subject look like data the model never saw? status: {verdict['status']}", fontsize=10
    )
    fig.tight_layout()
    out = Path(path)
    out.write_bytes(png_bytes(fig))
    return out
