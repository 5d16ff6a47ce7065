"""The audit.md sections of the per-subject verdict, the attacks, the robustness probes and the cost.

Each function takes the full audit record (``audit.json``) and returns markdown lines; a section whose
evidence is missing (no holdout, probes off) says so in one line instead of a table.
"""

from __future__ import annotations

from typing import Any

from dist_unlearn.eval.subject_verdict import TEST_TITLES

SUBJECT_PLOT = "audit_subjects.png"


def _q(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _band(b: list[float] | None) -> str:
    return "-" if not b else f"[{b[0]:.2f}, {b[1]:.2f}]"


def _flags(r: dict[str, Any]) -> str:
    flags = r.get("flagged_by") or {}
    return (
        ", ".join(
            f"{TEST_TITLES.get(t, t)} q={r['tests'][t]['quantile']:.2f} ({s})" for t, s in flags.items()
        )
        or "-"
    )


def subject_rows(ver: dict[str, Any]) -> list[list[str]]:
    """Table cells of each subject (and of the pool of all subjects): subject, rows, status before and
    after, the primary test's quantile before -> after, band, flags."""
    rows = list(ver["subjects"]) + ([dict(ver["pooled"], before=None)] if ver.get("pooled") else [])
    out = []
    for r in rows:
        before = r.get("before") or {}
        out.append(
            [
                str(r["subject"]),
                str(r["n_rows"]),
                before.get("status", "-"),
                r["status"],
                f"{_q(before.get('quantile'))} -> {_q(r['quantile'])}",
                _band(r["band"]),
                _flags(r),
            ]
        )
    return out


def _extraction_lines(ver: dict[str, Any]) -> list[str]:
    if ver.get("accuracy_unseen") is not None:
        per = "; ".join(f"{r['subject']} {r['accuracy']:.2f}" for r in ver["subjects"] if "accuracy" in r)
        return [
            "",
            f"Accuracy on each subject's own labels: {per}; unseen rows: {ver['accuracy_unseen']:.2f}.",
        ]
    unseen = ver.get("extraction_unseen")
    if not unseen:
        return []
    per = "; ".join(
        f"{r['subject']} {r['extraction']['exact']:.2f} / {r['extraction']['rouge_l']:.2f}"
        for r in ver["subjects"]
        if r.get("extraction")
    )
    lines = [
        "",
        f"What the model says (greedy answers, exact / ROUGE-L recall of the true answer): {per}; people it "
        f"never saw: {unseen['exact']:.2f} / {unseen['rouge_l']:.2f}.",
    ]
    verbatim = ver.get("verbatim")
    if verbatim:
        ids = ", ".join(str(i) for i in verbatim.get("ids", verbatim["rows"]))
        lines += ["", verbatim["sentence"] + (f" Their ids: {ids}." if ids else "")]
    return lines


def subjects_md(a: dict[str, Any]) -> list[str]:
    """``## Subjects``: one row per subject (and the pool), before and after, with band and flags."""
    ver = a["verdict"]
    subs = ver.get("subjects")
    lines = ["", "## Subjects", ""]
    info = a.get("subjects") or {}
    if info:
        lines.append(
            f"Subject column: `{info.get('column')}` ({info.get('source')}); "
            f"{len(info.get('forget_subjects') or [])} forget subjects, "
            f"{info.get('holdout_subjects') if info.get('holdout_subjects') is not None else 'no'} "
            f"unseen subjects in the holdout ({ver.get('unseen_subjects', 0)} in its audit part, the "
            "reference below)."
        )
        lines.append("")
    if not subs:
        return lines + ["No holdout: no subject could be judged."]
    first = TEST_TITLES.get(ver["tests"][0], ver["tests"][0])
    per = "for the whole request" if ver["settings"].get("family") == "request" else "per subject"
    lines += [
        f"| subject | rows | before | after | {first} quantile before -> after | band | flagged by |",
        "|---|---|---|---|---|---|---|",
    ]
    for cells in subject_rows(ver):
        cells[3] = f"**{cells[3]}**"
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Quantile: the mean position of the subject's rows among the audit's unseen rows (0 = fitted better "
        "than every unseen row, 0.5 = like them, 1 = worse than every one).",
        *_extraction_lines(ver),
        "",
        f"![subjects]({SUBJECT_PLOT})",
        "",
        "### How the verdict is decided",
        "",
        ver.get("explained", ""),
        "",
        f"- tests: {', '.join(TEST_TITLES.get(t, t) for t in ver['tests'])}; false-alarm rate "
        f"{ver['settings']['alpha']:g} {per}, "
        f"{ver['per_test_alpha']:.3g} per test (Bonferroni); for "
        f"the whole request at most {ver['request_false_alarm_bound']:.2g}.",
        "- design effect (how alike one subject's rows are, from "
        f"{ver.get('design_subjects', ver['unseen_subjects'])} never-seen subjects: the audit part's and the "
        "stop rule's): " + ", ".join(f"{TEST_TITLES.get(t, t)} {v:.2f}" for t, v in ver["inflation"].items()),
        f"- resolution: {ver['resolution']['sentence']}",
    ]
    return lines


def attacks_md(a: dict[str, Any]) -> list[str]:
    """``## Attacks``: every attack's forget-vs-unseen AUC before and after, and the extraction rates."""
    ev_b, ev_a = a["evidence"]["before"] or {}, a["evidence"]["after"]
    att_a = ev_a.get("attacks")
    lines = ["", "## Attacks", ""]
    if not att_a:
        return lines + ["No holdout: no attack could compare the forget rows with unseen rows."]
    att_b = ev_b.get("attacks") or {}
    lines += [
        "Forget-vs-unseen AUC of each membership attack (open-unlearning's definitions; 1 = the forget rows "
        "look like training members, 0.5 = like unseen rows).",
        "",
        "| attack | before | after |",
        "|---|---|---|",
    ]
    for name, v in att_a.items():
        lines.append(f"| {TEST_TITLES.get(name, name)} | {_q(att_b.get(name))} | {_q(v)} |")
    ex_a = ev_a.get("extraction")
    if ex_a:
        ex_b = ev_b.get("extraction") or {}
        lines += [
            "",
            "Extraction: the greedy answer to each row's prompt against its true answer (exact: said "
            "verbatim; ROUGE-L recall). Unseen rows give the rate a model reaches on people it never saw.",
            "",
            "| rows | n | exact before | exact after | ROUGE-L before | ROUGE-L after |",
            "|---|---|---|---|---|---|",
        ]
        for name, e in ex_a.items():
            b = ex_b.get(name) or {}
            lines.append(
                f"| {name} | {e['rows']} | {_q(b.get('exact'))} | {_q(e['exact'])} | "
                f"{_q(b.get('rouge_l'))} | {_q(e['rouge_l'])} |"
            )
    return lines


def probes_md(a: dict[str, Any]) -> list[str]:
    """``## Robustness probes``: each probe's verdict and how much of the gap returned."""
    pr = a.get("probes") or {}
    lines = ["", "## Robustness probes", ""]
    if not pr.get("enabled"):
        return lines + [f"Not run: {pr.get('why', 'probes off')}."]
    lines += [
        "Each probe nudges a copy of the delivered model and judges it again (the delivered model is not "
        "touched: parameters' sha256 "
        + ("unchanged" if pr.get("delivered_model_unchanged") else "**CHANGED**")
        + "). LOSS AUC of the rows judged: original -> delivered -> probed; returned = share of the "
        "unlearning's AUC change undone.",
        "",
        "| probe | status | failing | LOSS AUC orig -> deliv -> probe | returned | holdout loss change | "
        "work |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in pr["probes"]:
        if p.get("skipped"):
            lines.append(f"| {p['probe']} | skipped | {p['skipped']} | | | | |")
            continue
        g = p["aucs"].get("loss") or {}
        ret = g.get("returned")
        work = f"{p['rows']} rows x {p['epochs']} ep" if "epochs" in p else f"{p.get('bits')}-bit RTN"
        lines.append(
            f"| {p['probe']} | {p['status']} | {', '.join(map(str, p['failing'])) or '-'} | "
            f"{_q(g.get('original'))} -> {_q(g.get('delivered'))} -> {_q(g.get('probe'))} | "
            f"{'-' if ret is None else f'{round(ret, 2) + 0.0:.0%}'} | "
            f"{_pct(p.get('holdout_loss_change'))} | {work} |"
        )
    cost = pr.get("cost") or {}
    lines += ["", f"Probe cost: {cost.get('example_passes', 0):.0f} example passes (role probe)."]
    return lines


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def cost_md(a: dict[str, Any]) -> list[str]:
    """``## Cost``: the unlearning by role, against retraining; the audit and the probes apart."""
    run = a["run"]
    cost = run.get("cost") or {}
    lines = ["", "## Cost", ""]
    vs = a.get("cost_against_retraining")
    if vs:
        lines.append(f"- unlearning: {vs['sentence']}")
    elif cost.get("example_passes") is not None:
        lines.append(f"- unlearning: {cost['example_passes']:.0f} example passes")
    else:
        lines.append("- unlearning: not reported by this method")
    for role, entry in (cost.get("by_role") or {}).items():
        lines.append(f"  - {role}: {entry['example_passes']:.0f} example passes")
    audit_cost = (a.get("audit") or {}).get("cost") or {}
    if audit_cost:
        lines.append(
            f"- audit (attacks: forward passes; extraction: generation), apart: "
            f"{audit_cost.get('example_passes', 0):.0f} example passes"
        )
    pr = a.get("probes") or {}
    if pr.get("enabled"):
        lines.append(
            f"- robustness probes, apart: {(pr.get('cost') or {}).get('example_passes', 0):.0f} passes"
        )
    return lines
