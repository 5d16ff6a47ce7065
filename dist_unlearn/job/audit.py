"""The audit record of an unlearning job: ``audit.json``, ``audit.md``, the loss plot and the model card.

``audit.json`` is what a compliance reviewer reads (format ``dist_unlearn.audit/1``):

- ``request``: the data (path, sha256, rows, layout), the forget selector, the rows it selected and the file
  of their ids (``forget_ids.txt``, count, sha256), the holdout (path, sha256, rows, overlap with training);
- ``model``: input and output folders with the sha256 of every weight file, the model kind, adapter or not;
- ``method``: name and every option; ``run``: workers, ZeRO stage, start/end (UTC), wall time, cost in
  example passes (when the method reports it), stop reason, steps;
- ``provenance``: package versions, git commit, machine (:func:`dist_unlearn.provenance.provenance`);
- ``evidence``: ``before`` and ``after``, each with ``forget_loss``, ``retain_loss`` (a seeded sample of the
  retain rows), ``holdout_loss``, ``forget_vs_holdout_auc`` (loss membership AUC, 0.5 = indistinguishable),
  ``ks_pvalue`` and, for classifiers, accuracies;
- ``verdict``: status, sentence and thresholds (:func:`dist_unlearn.eval.verdict.decide`), plus the change
  of the retain and holdout losses; ``not_checked`` lists what could not be checked (e.g. no holdout).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

AUDIT_FORMAT = "dist_unlearn.audit/1"
PLOT_NAME = "audit_losses.png"
#: the retain and holdout losses should stay within this relative change (reported, not enforced)
UTILITY_RTOL = 0.10


def _fmt(x: Any, spec: str = ".4f") -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return format(x, spec) if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"
    return str(x)


def strip_losses(ev: dict[str, Any]) -> dict[str, Any]:
    """The evidence record without the per-example loss lists (they go to the plot and audit.json)."""
    return {k: v for k, v in ev.items() if k not in ("losses", "forget_vs_unseen_auc")}


def utility_checks(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Relative change of the retain and holdout losses, and whether each rose by at most ``UTILITY_RTOL``.

    A fall is not a failure: a lower retain or holdout loss is better utility, not damage.
    """
    from dist_unlearn.job.evidence import relative_change

    out: dict[str, Any] = {"tolerance": UTILITY_RTOL}
    for key in ("retain_loss", "holdout_loss"):
        ch = relative_change(before.get(key), after.get(key))
        out[f"{key}_change"] = ch
        out[f"{key}_within_tolerance"] = None if ch is None else ch <= UTILITY_RTOL
    return out


def plot_losses(before: dict[str, Any] | None, after: dict[str, Any], path: Path) -> Path:
    """Histograms of per-example losses, before | after: forget (red), holdout (blue), retain (grey); one
    panel (the audited model) when there is no ``before``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [
        ("retain", "#999999", "retain (sample)"),
        ("holdout", "#1f77b4", "holdout (never seen)"),
        ("forget", "#d62728", "forget"),
    ]
    allv = np.concatenate(
        [
            np.asarray(ev["losses"][s], float)
            for ev in (before, after)
            if ev is not None
            for s, _, _ in sets
            if s in ev["losses"]
        ]
    )
    allv = allv[np.isfinite(allv)]
    hi = float(np.quantile(allv, 0.995)) if allv.size else 1.0
    bins = np.linspace(0.0, max(hi, 1e-6) * 1.05, 40)
    panels = (
        [(before, "before unlearning"), (after, "after unlearning")] if before else [(after, "audited model")]
    )
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5 * len(panels), 3.8), sharex=True, sharey=True, squeeze=False
    )
    axes = axes[0]
    for ax, (ev, title) in zip(axes, panels, strict=True):
        for name, color, label in sets:
            vals = ev["losses"].get(name)
            if vals is None:
                continue
            style = {"histtype": "step", "linewidth": 1.6} if name == "retain" else {"alpha": 0.5}
            ax.hist(
                np.clip(vals, bins[0], bins[-1]), bins=bins, color=color, label=label, density=True, **style
            )
        auc = ev.get("forget_vs_holdout_auc")
        sub = (
            f"forget-vs-holdout AUC {auc:.2f} (0.5 = indistinguishable)" if auc is not None else "no holdout"
        )
        ax.set_title(f"{title}\n{sub}", fontsize=10)
        ax.set_xlabel("per-example loss (higher = less fitted)")
    axes[0].set_ylabel("density")
    axes[-1].legend(fontsize=8, loc="upper right")
    fig.suptitle("Is the forget set still fitted like training data, or like data never seen?", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_audit(
    stage: Path, record: dict[str, Any], before: dict[str, Any] | None, after: dict[str, Any]
) -> None:
    """Write ``audit.json``, ``audit.md`` and the plot into ``stage`` (the job's staging folder)."""
    from dist_unlearn.eval.subject_plot import plot_subjects
    from dist_unlearn.job.audit_sections import SUBJECT_PLOT

    plot_losses(before, after, stage / PLOT_NAME)
    plot_subjects(record["verdict"], stage / SUBJECT_PLOT)
    full = dict(record)
    full["evidence"] = {
        "before": strip_losses(before) if before is not None else None,
        "after": strip_losses(after),
        "per_example_losses": {"before": before["losses"] if before else None, "after": after["losses"]},
        "plot": PLOT_NAME,
    }
    (stage / "audit.json").write_text(json.dumps(full, indent=2, default=str))
    (stage / "audit.md").write_text(audit_markdown(full))


def audit_markdown(a: dict[str, Any]) -> str:
    """The human-readable audit (the same facts as audit.json, without the per-example losses)."""
    req, mdl, run, ver = a["request"], a["model"], a["run"], a["verdict"]
    agg = ver.get("aggregate") or ver
    ev_b, ev_a = a["evidence"]["before"] or {}, a["evidence"]["after"]
    only = " (audit only: the model as given, no unlearning run)" if a.get("audit_only") else ""
    lines = [
        "# Unlearning audit" + only,
        "",
        f"**Verdict: {ver['status']}.** {ver['sentence']}",
        "",
        "## What was asked",
        "",
        f"- data: `{req['data']['path']}` (sha256 `{req['data']['sha256']}`, {req['data']['rows']} rows, "
        f"layout `{req['data']['layout']}`)",
        f"- forget selector: `{json.dumps(req['forget']['selector'])}` -> {req['forget']['rows']} rows "
        f"(ids: {req['forget']['id_source']})",
        f"- forgotten ids: `{req['forget']['ids_file']['path']}` ({req['forget']['ids_file']['count']} ids, "
        f"sha256 `{req['forget']['ids_file']['sha256']}`)",
        f"- retained rows: {req['retain_rows']}",
    ]
    ho = req.get("holdout")
    if ho:
        lines.append(
            f"- holdout (never seen): `{ho['path']}` (sha256 `{ho['sha256']}`, {ho['rows']} rows, "
            f"{ho['overlap_with_training']} identical to training rows)"
        )
    else:
        lines.append("- holdout: none given")
    lines += [
        "",
        "## Model",
        "",
        f"- input: `{mdl['input']['path']}` ({mdl['input']['kind']}"
        + (", LoRA adapter" if mdl["input"]["adapter"] else "")
        + ")",
    ]
    lines += [f"  - `{k}` sha256 `{v}`" for k, v in mdl["input"]["weight_sha256"].items()]
    if mdl.get("output"):
        lines.append(f"- output: `{mdl['output']['path']}`")
        lines += [f"  - `{k}` sha256 `{v}`" for k, v in mdl["output"]["weight_sha256"].items()]
    opts = a["method"].get("given") or {}
    cost = run.get("cost") or {}
    cost_txt = (
        f"{cost['example_passes']:.0f} example passes (1 = one example's forward + backward)"
        if cost.get("example_passes") is not None
        else "not reported by this method"
    )
    lines += [
        "",
        "## Method and run",
        "",
        *(["- audit only: no unlearning was run; the model above was judged as given", ""] if only else []),
        f"- method: `{a['method']['name']}`; options given: `{json.dumps(opts, default=str)}` (all resolved "
        "options in audit.json)",
        f"- workers: {run['workers'] or 'in-process'}; ZeRO stage: {run['zero_stage']}; "
        f"{run.get('engine_note') or ''}",
        f"- start {run['start_utc']}, end {run['end_utc']}, wall time {run['wall_time_s']:.1f} s",
        f"- cost: {cost_txt}",
        f"- steps: {run.get('num_steps')} ({run.get('accepted_steps')} accepted; a rejected step is an ARC "
        f"trial that was re-solved), stop reason: {run.get('stop_reason')}",
        "",
        "## Evidence",
        "",
        "| quantity | before | after |",
        "|---|---|---|",
    ]
    keys = ["forget_loss", "retain_loss", "holdout_loss", "forget_vs_holdout_auc", "ks_pvalue"]
    keys += [k for k in ev_b if k.endswith("_accuracy")]
    for k in keys:
        lines.append(f"| {k} | {_fmt(ev_b.get(k))} | {_fmt(ev_a.get(k))} |")
    chk = a["checks"]
    lines += [
        "",
        f"Retain loss change {_fmt(chk.get('retain_loss_change'), '+.1%')}, holdout loss change "
        f"{_fmt(chk.get('holdout_loss_change'), '+.1%')} (tolerance {chk['tolerance']:.0%}).",
        "",
        f"Aggregate loss evidence (all forget rows at once): {agg['status']}; thresholds "
        f"`{json.dumps(agg['thresholds'])}`; target AUC {agg['target_auc']} ({agg['target']}).",
        "",
        f"![losses]({a['evidence']['plot']})",
    ]
    from dist_unlearn.job.audit_sections import attacks_md, cost_md, probes_md, subjects_md

    lines += subjects_md(a) + attacks_md(a) + probes_md(a) + cost_md(a)
    if a.get("not_checked"):
        lines += ["", "## Not checked", ""] + [f"- {x}" for x in a["not_checked"]]
    if a.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {x}" for x in a["warnings"]]
    p = a["provenance"]
    lines += [
        "",
        "## Provenance",
        "",
        f"- versions: `{json.dumps(p.get('versions'))}`",
        f"- python {p.get('python')}, git commit {p.get('git_commit')} (dirty: {p.get('git_dirty')}), "
        f"host {p.get('hostname')}",
        f"- machine: `{json.dumps(p.get('platform'))}`",
        "",
    ]
    return "\n".join(lines)


def model_card(a: dict[str, Any]) -> str:
    """``model/README.md``: what this model is, how it was unlearned, where the audit is."""
    req, ver, run = a["request"], a["verdict"], a.get("run") or {}
    if run.get("workers"):
        engine = f"on {run['workers']} Ray workers, DeepSpeed ZeRO-{run.get('zero_stage')}"
    else:
        engine = "in one process"
    cost = (run.get("cost") or {}).get("example_passes")
    how = f"It ran {engine}" + (f", at a cost of {cost:.0f} example passes." if cost is not None else ".")
    given = a["method"].get("given") or {}
    if given:
        how += " Options given: " + ", ".join(f"`{k}={v}`" for k, v in sorted(given.items())) + "."
    audit_dir = Path(a["model"]["output"]["path"]).parent if a["model"].get("output") else None
    return "\n".join(
        [
            "---",
            "tags: [dist-unlearn, machine-unlearning]",
            "---",
            "",
            "# Unlearned model",
            "",
            f"This model is `{a['model']['input']['path']}` after **machine unlearning** with dist_unlearn "
            f"(method `{a['method']['name']}`): {req['forget']['rows']} training rows of "
            f"`{req['data']['path']}` were removed from its influence (ids in `../forget_ids.txt`, sha256 "
            f"`{req['forget']['ids_file']['sha256']}`).",
            "",
            how,
            "",
            f"Verdict: **{ver['status']}**. {ver['sentence']}",
            "",
            "The full audit record (what was asked, hashes of the input and output weights, method options, "
            "versions, cost, and the forget / retain / holdout evidence before and after) is in "
            "`../audit.json` and `../audit.md`"
            + (f" (written to `{audit_dir / 'audit.json'}`)." if audit_dir is not None else "."),
            "",
        ]
    )
