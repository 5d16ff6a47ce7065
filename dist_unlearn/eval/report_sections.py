"""Markdown sections of a record: header, verdicts, cost, metric definitions, provenance, weight hashes.

Shared by the experiment report (:mod:`dist_unlearn.eval.report`) and any other record that has the same
fields (``provenance``, ``verdicts``, ``experiment.forgotten_ids``, ``experiment.saved_models``), such as
the unlearning job's audit record.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from dist_unlearn.eval.plots import BETTER, DIRECTION_TEXT

#: one-line definitions of the metrics a report may show (name -> definition)
METRIC_DEFINITIONS = {
    "tow": "Tug-of-War: product over retain/forget/test of 1 - |accuracy - retrained accuracy|; 1 = "
    "behaves like the retrained model",
    "acc_retain": "accuracy on the retain set (the training data that stays)",
    "acc_forget": "accuracy on the forget set (the retrained model's value is the target)",
    "acc_test": "accuracy on held-out test data",
    "js_forget": "Jensen-Shannon divergence (bits) of the predictions from the retrained model's, on the "
    "forget set",
    "mia_auc": "membership-inference AUC (loss attack): P(forget loss < test loss); the retrained model's "
    "value is the target",
    "mia_auc_gap": "|mia_auc - retrained mia_auc|",
    "forget_quality": "TOFU forget quality: KS-test p-value of forget truth ratios vs the retrained model's",
    "model_utility": "TOFU model utility: harmonic mean of retain answer probability, ROUGE and truth ratio",
    "forget_truth_ratio": "TOFU truth ratio on the forget set, mean of min(R, 1/R)",
    "retain_Q_A_Prob": "probability of the correct answer on retain questions",
    "forget_Q_A_ROUGE": "ROUGE-L recall of generated answers on forget questions",
    "retain_Q_A_ROUGE": "ROUGE-L recall of generated answers on retain questions",
    "forget_ppl": "perplexity on the forget set",
    "retain_ppl": "perplexity on the retain set",
    "mia_min_k": "min-k% membership-inference AUC on the forget set",
    "privleak": "relative min-k AUC difference to the retrained model, in %",
    "param_distance": "L2 distance of the weights to the retrained model's",
    "update_norm": "L2 norm of the change of the weights from the original model",
    "time_fraction_of_retrain": "wall time of the method / wall time of retraining",
}


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


def _gib(n: Any) -> str:
    return f"{n / 2**30:.1f} GiB" if isinstance(n, int | float) else "?"


def header_lines(results: Mapping[str, Any], config_file: str | None) -> list[str]:
    """Title, when/where/by what it was made, what was forgotten, where the config is."""
    exp = results.get("experiment") if isinstance(results.get("experiment"), Mapping) else {}
    prov = results.get("provenance") or {}
    title = exp.get("name") or exp.get("task")
    lines = [f"# dist_unlearn report{': ' + str(title) if title else ''}", ""]
    if results.get("created_utc"):
        lines.append(f"Results created {results['created_utc']} (schema {results.get('schema_version')}).")
    if prov:
        plat = prov.get("platform") or {}
        commit = prov.get("git_commit")
        dirty = " with local changes" if prov.get("git_dirty") else ""
        gpus = ", ".join(plat.get("gpus") or []) or "no GPU"
        short = commit[:12] if commit else "unknown"
        workers = prov.get("workers") or "none (local)"
        lines.append(
            f"Made by dist_unlearn {prov.get('dist_unlearn')} (commit {short}"
            f"{dirty}) on {prov.get('hostname')}: {plat.get('cpu_count')} CPUs, "
            f"{_gib(plat.get('memory_bytes'))} memory, {gpus}; workers: {workers}."
        )
    flat = {k: v for k, v in exp.items() if not isinstance(v, Mapping | list) and k != "name"}
    if flat:
        lines.append("Experiment: " + ", ".join(f"{k} {_fmt(v)}" for k, v in flat.items()) + ".")
    ids = exp.get("forgotten_ids") or {}
    if ids:
        lines.append(
            f"Forgotten: {ids.get('count')} examples, ids listed in [{ids.get('path')}]({ids.get('path')}) "
            f"(sha256 `{ids.get('sha256')}`)."
        )
    if config_file:
        lines.append(f"Configuration: [{config_file}]({config_file}) (appendix).")
    return lines + [""]


def verdict_lines(results: Mapping[str, Any]) -> list[str]:
    """One row per model: the verdict against the retrained oracle and against unseen data, with warnings."""
    verdicts = results.get("verdicts")
    if not isinstance(verdicts, Mapping) or not verdicts:
        return ["## Verdict", "", "No verdict in these results (per-example losses were not recorded).", ""]
    rows, warnings = [], []
    for name, rec in verdicts.items():
        vr, vu, ev = rec.get("vs_retrained"), rec.get("vs_unseen"), rec.get("evidence") or {}
        if vr is None and vu is None:
            continue
        main = vr or vu
        status = lambda v: "-" if v is None else v["status"].replace("_", " ")  # noqa: E731
        rows.append(
            [
                f"{name} (before unlearning)" if name == "original" else name,
                status(vr),
                status(vu),
                _fmt(ev.get("forget_vs_unseen_auc")),
                _fmt(main.get("target_auc")),
                _fmt(ev.get("ks_pvalue")),
                main.get("sentence", ""),
            ]
        )
        if name == "original":
            continue
        if main.get("changed") is False:
            warnings.append(
                f"**Warning: {name} changed nothing**: the forget-set loss is the same as before."
            )
        elif main.get("status") == "not_forgotten":
            warnings.append(f"**Warning: {name}: the forget set stays distinguishable** from unseen data.")
    th = next(
        (
            v.get("thresholds")
            for r in verdicts.values()
            for v in r.values()
            if isinstance(v, Mapping) and v.get("thresholds")
        ),
        None,
    )
    lines = ["## Verdict", ""]
    lines += _table(
        ["model", "vs retrained", "vs unseen data", "forget-vs-test AUC", "target AUC", "KS p", "meaning"],
        rows,
    )
    lines.append("")
    if th:
        lines.append(
            f"Forgotten: |AUC - target| <= {th['auc_tolerance']} (and, without a retrained model, KS p >= "
            f"{th['ks_alpha']}); not forgotten: |AUC - target| > {th['auc_distinguishable']} or nothing "
            "changed; partially in between. AUC = P(forget loss < test loss) under the model; the retrained "
            "model's AUC is the target against the oracle, 0.5 against unseen data."
        )
        lines.append("")
    return lines + [f"- {w}" for w in warnings] + ([""] if warnings else [])


def cost_cells(methods: Mapping[str, Any]) -> tuple[list[str], dict[str, list[str]]]:
    """Cost columns: example passes and % of retraining (passes and wall time)."""
    from dist_unlearn.cost import percent_of

    ref = ((methods.get("retrain") or {}).get("stats") or {}).get("cost")
    have_cost = any((rec.get("stats") or {}).get("cost") for rec in methods.values())
    header = (["example passes", "passes % retrain"] if have_cost else []) + ["wall % retrain"]
    rows = {}
    for name, rec in methods.items():
        cost = (rec.get("stats") or {}).get("cost")
        frac = (rec.get("metrics") or {}).get("time_fraction_of_retrain")
        cells = []
        if have_cost:
            pct = None if name == "original" else percent_of(cost, ref)
            cells += [_fmt(None if not cost else cost.get("example_passes")), _fmt(pct)]
        cells.append(_fmt(None if frac is None or name == "original" else 100 * frac))
        rows[name] = cells
    return header, rows


def definition_lines(metrics: list[str]) -> list[str]:
    """The metric definitions table (only metrics present), with the better direction."""
    rows = [
        [m, METRIC_DEFINITIONS[m], DIRECTION_TEXT.get(BETTER.get(m, ""), "-")]
        for m in metrics
        if m in METRIC_DEFINITIONS
    ]
    if not rows:
        return []
    return ["## Metric definitions", "", *_table(["metric", "definition", "better"], rows), ""]


def provenance_lines(prov: Mapping[str, Any] | None) -> list[str]:
    """Versions, commit, machine, command, creation time."""
    if not prov:
        return []
    plat = prov.get("platform") or {}
    rows = [
        ["created (UTC)", str(prov.get("created_utc"))],
        ["command", f"`{prov.get('command')}`" if prov.get("command") else "-"],
        ["git commit", f"{prov.get('git_commit')}" + (" (local changes)" if prov.get("git_dirty") else "")],
        ["python", str(prov.get("python"))],
        *[[k, str(v)] for k, v in (prov.get("versions") or {}).items()],
        [
            "machine",
            f"{plat.get('system')} {plat.get('machine')}, {plat.get('cpu_count')} CPUs, "
            f"{_gib(plat.get('memory_bytes'))}",
        ],
        ["GPUs", ", ".join(plat.get("gpus") or []) or "none"],
        ["hostname", str(prov.get("hostname"))],
        ["workers", str(prov.get("workers") or "none (local)")],
    ]
    return ["## Provenance", "", *_table(["field", "value"], rows), ""]


def weights_lines(results: Mapping[str, Any]) -> list[str]:
    """sha256 of every saved weight file."""
    exp = results.get("experiment") if isinstance(results.get("experiment"), Mapping) else {}
    saved = exp.get("saved_models") or {}
    rows = [
        [f"{rec.get('path')}/{file}", f"`{digest}`"]
        for rec in saved.values()
        for file, digest in (rec.get("sha256") or {}).items()
    ]
    if not rows:
        return []
    return ["## Saved weights (sha256)", "", *_table(["file", "sha256"], rows), ""]
