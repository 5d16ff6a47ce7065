"""The audit's subject plot: every subject against the distribution of data never seen, under every test.

One panel per test (LOSS, zlib, Min-K%, Min-K%++, extraction for causal LMs; loss, confidence, entropy for
classifiers), one line per subject (the request's order; at most :data:`MAX_SUBJECTS`, the furthest from
0.5 first), then the pool of all subjects and the subjects the model never saw. The x axis is the position
among the audit's unseen rows under that test: 0 = more member-like than every unseen row, 0.5 = like them,
1 = less than every one. Each line shows the subject's central band for that test (shaded), its rows
(small dots), its mean quantile after unlearning (large marker, coloured by that test's verdict) and before
(hollow marker, arrow to after). The bottom line shows where each never-seen subject falls against the
others: the spread the band is calibrated on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dist_unlearn.eval.plots import png_bytes
from dist_unlearn.eval.subject_verdict import TEST_TITLES

MAX_SUBJECTS = 40
COLOURS = {
    "forgotten": "#2ca02c",
    "recognisable": "#1f77b4",
    "conspicuous": "#d62728",
    "undecided": "#7f7f7f",
}


def _panel(ax: Any, rows: list[dict[str, Any]], test: str, reference: list[dict[str, Any]]) -> None:
    for y, r in enumerate(rows):
        t = r["tests"][test]
        lo, hi = t["band"]
        ax.barh(y, hi - lo, left=lo, height=0.6, color="#dddddd", zorder=0)
        dots = t.get("row_quantiles") or []
        ax.scatter(dots, [y] * len(dots), s=8, color="#555555", zorder=2)
        before = (r.get("before") or {}).get("tests", {}).get(test)
        if before is not None:
            ax.annotate(
                "",
                xy=(t["quantile"], y),
                xytext=(before["quantile"], y),
                arrowprops={"arrowstyle": "->", "color": "#999999", "lw": 1},
                zorder=1,
            )
            ax.scatter([before["quantile"]], [y], s=55, facecolors="none", edgecolors="#666666", zorder=3)
        ax.scatter([t["quantile"]], [y], s=80, color=COLOURS.get(t["status"], "k"), edgecolors="k", zorder=4)
    if reference:
        y = len(rows)
        ax.scatter(
            [x["quantile"] for x in reference], [y] * len(reference), s=25, color="#aaaaaa", marker="s"
        )
    ax.axvline(0.5, color="k", linestyle="--", linewidth=0.8)
    ax.set_xlim(-0.05, 1.05)
    ax.set_xticks([0, 0.5, 1])
    ax.set_title(TEST_TITLES.get(test, test), fontsize=9)
    ax.set_xlabel("quantile among unseen rows", fontsize=7)
    ax.tick_params(labelsize=7)


def plot_subjects(verdict: dict[str, Any], path: str | Path) -> Path | None:
    """Write the subject plot of a per-subject verdict record (:func:`dist_unlearn.job.judge.job_verdict`);
    None (nothing written) when the verdict has no subjects."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    subjects = verdict.get("subjects")
    if not subjects:
        return None
    shown = subjects
    if len(subjects) > MAX_SUBJECTS:
        shown = sorted(subjects, key=lambda r: -abs(r["quantile"] - 0.5))[:MAX_SUBJECTS]
    rows = [*shown, verdict["pooled"]] if verdict.get("pooled") else list(shown)
    references = verdict.get("unseen_reference") or {}
    tests = verdict["tests"]
    n = len(rows) + (1 if any(references.values()) else 0)
    fig = Figure(figsize=(2.4 + 2.3 * len(tests), 1.9 + 0.36 * n))
    axes = fig.subplots(1, len(tests), sharey=True, squeeze=False)[0]
    for ax, test in zip(axes, tests, strict=True):
        _panel(ax, rows, test, references.get(test) or [])
    labels = [f"{r['subject']} ({r['n_rows']} rows): {r['status']}" for r in rows]
    if n > len(rows):
        labels.append("never-seen subjects")
    axes[0].set_yticks(range(n))
    axes[0].set_yticklabels(labels, fontsize=8)
    axes[0].set_ylim(n - 0.5, -0.5)
    handles = [
        Line2D([], [], marker="o", linestyle="none", color=c, markeredgecolor="k", label=s)
        for s, c in COLOURS.items()
    ]
    handles += [
        Line2D([], [], marker="o", linestyle="none", markerfacecolor="none", color="#666666", label="before"),
        Line2D([], [], marker="s", linestyle="none", color="#dddddd", markersize=10, label="band"),
        Line2D([], [], marker="s", linestyle="none", color="#aaaaaa", label="a never-seen subject"),
    ]
    fig.legend(handles=handles, fontsize=7, loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle(
        f"Does each subject look like data the model never saw? Job: {verdict['status']}. "
        "(0 = more member-like than every unseen row, 0.5 = like them, 1 = less)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out = Path(path)
    out.write_bytes(png_bytes(fig))
    return out
