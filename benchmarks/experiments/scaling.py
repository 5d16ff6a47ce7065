"""Is the cost of a request set by the forget set? The job's default method, first-order NPO and GradDiff
(each with the forgetting stop rule) and retraining on one LM recipe at 1x, 10x and 100x training rows.

The cases (:mod:`scaling_cases`): a GPT-2-shaped LM that memorised people's Q/A records, the same 4 people
to forget and the same 16 holdout people at every scale. The holdout is split by person as the job splits
it: half calibrate the stop rule, half are the audit's reference. Every method runs through ``unlearn()``
in-process with the rows the job would give it (forget, retain, calibration, each row's person as its
subject). Reported per (scale, method): example passes (``stats["cost"]``, by role) and their share of
retraining's (epochs x retained rows), wall seconds, the verdict -- per subject (every person inside the band
of the audit rows, :func:`dist_unlearn.eval.subjects.subject_scores`) and the aggregate
(:func:`dist_unlearn.eval.verdict.decide`) --, the audit holdout loss change and the retained rows' loss.

    python benchmarks/experiments/scaling.py --threads 1
    python benchmarks/experiments/scaling.py --scales 10 --sweep retain_sample 16 32 64 128 256

Writes ``benchmarks/results/scaling[_<tag>].json`` and a PNG next to it: example passes against training
rows on log-log axes, retraining's line included.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scaling_cases import CACHE, ROOT, SCALES, build_scale, token_rows, tokenizer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FIRST_ORDER = ("npo", "grad_diff")


def methods() -> dict[str, tuple[str, dict[str, Any]]]:
    """label -> (registered method, options): the job's default; first-order NPO and GradDiff at their
    ``unlearn()`` defaults; CureNewton on the default's objective (match_unseen) with the default's stop
    settings, with its curvature kept across steps and with a fresh Krylov solve at every step. Each gets the
    stop rule's rows (:meth:`Case.options`)."""
    from dist_unlearn.job.config import DEFAULT_METHOD

    default = {k: v for k, v in DEFAULT_METHOD.items() if k != "name"}
    stop = {k: v for k, v in default.items() if k in ("stop_within", "retain_tolerance")}
    cure = {**stop, "objective": "match_unseen", "krylov_max_iter": 10}
    return {
        "default": (DEFAULT_METHOD["name"], default),
        "npo": ("npo", {}),
        "grad_diff": ("grad_diff", {}),
        "cure_match_unseen": ("cure_newton", cure),
        "cure_match_unseen_fresh": ("cure_newton", {**cure, "reuse_curvature": False}),
    }


class Case:
    """One scale's rows as the job would split them, and the original's evidence."""

    def __init__(self, scale: int) -> None:
        import datasets

        from dist_unlearn.data.split import sample_rows
        from dist_unlearn.job.holdout import split_holdout

        self.folder = build_scale(scale)
        self.scale = scale
        self.info = json.loads((self.folder / "case.json").read_text())
        self.tok = tokenizer(CACHE)
        train = [json.loads(x) for x in (self.folder / "train.jsonl").read_text().splitlines()]
        holdout = [json.loads(x) for x in (self.folder / "holdout.jsonl").read_text().splitlines()]
        forget_ids = {int(x) for x in (self.folder / "forget_ids.txt").read_text().split()}
        split = split_holdout(datasets.Dataset.from_list(holdout), fraction=0.5, group_column="person",
                              id_column="id", seed=0, stop_rule=True)  # fmt: skip
        forget = [r for r in train if r["id"] in forget_ids]
        retain = [r for r in train if r["id"] not in forget_ids]
        cal = [holdout[i] for i in split.calibration]
        audit = [holdout[i] for i in split.audit]
        parts = {"forget": forget, "retain": retain, "calibration": cal, "audit": audit}
        self.rows = {k: token_rows(v, self.tok) for k, v in parts.items()}
        self.rows["retain_sample"] = self.rows["retain"].select(sample_rows(len(retain), 256, 0))
        self.subjects = {k: [r["person"] for r in parts[k]] for k in ("forget", "calibration", "audit")}
        self.pad = int(self.tok.pad_token_id)
        self.before = self.judge(self.model("model"))

    def model(self, which: str) -> Any:
        from dist_unlearn.models import load_model

        return load_model(str(self.folder / which), task="causal_lm").eval()

    def options(self) -> dict[str, Any]:
        """What the job adds to a method's options: collation, seed, the stop rule's rows and subjects."""
        from dist_unlearn.data import pad_collate

        return {"collate_fn": pad_collate(self.pad), "seed": 0, "calibration": self.rows["calibration"],
                "forget_subjects": self.subjects["forget"],
                "calibration_subjects": self.subjects["calibration"]}  # fmt: skip

    def judge(self, model: Any) -> dict[str, Any]:
        """Evidence on the forget / retained-sample / audit rows, the per-subject and aggregate verdicts."""
        from dist_unlearn.eval.subjects import subject_scores
        from dist_unlearn.eval.verdict import decide
        from dist_unlearn.job.evidence import evidence_record, measure_model

        sets = {
            "forget": self.rows["forget"],
            "retain": self.rows["retain_sample"],
            "holdout": self.rows["audit"],
        }
        ev = evidence_record(measure_model(model, sets, "causal_lm", tokenizer=self.tok, pad_id=self.pad,
                                           batch_size=16))  # fmt: skip
        scores = subject_scores(ev["losses"]["forget"], self.subjects["forget"], ev["losses"]["holdout"],
                                unseen_subjects=self.subjects["audit"])  # fmt: skip
        statuses = {s.subject: s.status for s in scores}
        before = getattr(self, "before", None)
        return {
            "forget_loss": ev["forget_loss"],
            "retain_loss": ev["retain_loss"],
            "holdout_loss": ev["holdout_loss"],
            "auc": ev["forget_vs_unseen_auc"],
            "verdict": decide(ev, before=before["evidence"] if before else None)["status"],
            "subjects": statuses,
            "subject_quantiles": {s.subject: round(s.quantile, 3) for s in scores},
            "per_subject": "forgotten" if set(statuses.values()) == {"forgotten"} else "not_all_forgotten",
            "evidence": {k: v for k, v in ev.items() if k != "losses"},
        }


def run_method(case: Case, label: str, method: str, opts: dict[str, Any]) -> dict[str, Any]:
    from dist_unlearn import unlearn

    model = case.model("model")
    t0 = time.perf_counter()
    res = unlearn(model, None, case.rows["retain"], case.rows["forget"], method=method,
                  **{**case.options(), **opts})  # fmt: skip
    wall = time.perf_counter() - t0
    st = res.stats
    cost = st["cost"]
    return {
        **record_base(case, label, method, opts),
        "example_passes": cost["example_passes"],
        "passes_by_role": {r: e["example_passes"] for r, e in cost["by_role"].items()},
        "wall_s": wall,
        "stop_reason": st.get("stop_reason"),
        "steps": st.get("num_steps"),
        "accepted_steps": st.get("accepted_steps"),
        "hvps": st.get("total_hvps"),
        "hvps_per_accepted_step": st.get("hvps_per_accepted_step"),
        "curvature_bases": st.get("curvature_bases"),
        "after": case.judge(res.model),
    }


def record_base(case: Case, label: str, method: str, opts: dict[str, Any]) -> dict[str, Any]:
    return {"scale": case.scale, "train_rows": case.info["rows"]["train"], "label": label, "method": method,
            "options": {k: v for k, v in opts.items()},
            "retraining_example_passes": case.info["retraining_example_passes"]}  # fmt: skip


def retrain_record(case: Case) -> dict[str, Any]:
    passes = case.info["retraining_example_passes"]
    return {
        **record_base(case, "retrain", "retrain", {"epochs": case.info["recipe"]["epochs"]}),
        "example_passes": passes,
        "passes_by_role": {"retain": passes},
        "wall_s": case.info["wall_s"]["retraining"],
        "after": case.judge(case.model("retrained")),
    }


def summarise(r: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """The derived numbers of one record: % of retraining, holdout change."""
    a = r["after"]
    r["percent_of_retraining"] = 100.0 * r["example_passes"] / r["retraining_example_passes"]
    r["holdout_change"] = (a["holdout_loss"] - before["holdout_loss"]) / before["holdout_loss"]
    return r


def table(records: list[dict[str, Any]]) -> str:
    head = ["scale", "train rows", "method", "example passes", "% retrain", "wall s", "per-subject verdict",
            "verdict (AUC)", "AUC", "holdout change", "retain loss", "stop", "steps (acc.)",
            "HVPs/acc. step"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        a = r["after"]
        bad = [f"{s}: {v}" for s, v in a["subjects"].items() if v != "forgotten"]
        hv = r.get("hvps_per_accepted_step")
        cells = [f"{r['scale']}x", str(r["train_rows"]), r["label"], f"{r['example_passes']:,.0f}",
                 f"{r['percent_of_retraining']:.1f}", f"{r['wall_s']:.0f}",
                 "forgotten" if not bad else "; ".join(bad), a["verdict"], f"{a['auc']:.3f}",
                 f"{100 * r['holdout_change']:+.1f}%", f"{a['retain_loss']:.3f}",
                 str(r.get("stop_reason", "-")), f"{r.get('steps', '-')} ({r.get('accepted_steps', '-')})",
                 "-" if hv is None else f"{hv:.2f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], path: Path, title: str) -> None:
    """Example passes against training rows (log-log), one line per method; a filled marker = every subject
    forgotten, an open one = not; right: the audit holdout loss change."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8))
    labels = list(dict.fromkeys(r["label"] for r in records))
    for i, label in enumerate(labels):
        rs = sorted((r for r in records if r["label"] == label), key=lambda r: r["train_rows"])
        x = [r["train_rows"] for r in rs]
        color = "black" if label == "retrain" else f"C{i}"
        style = "--" if label == "retrain" else "-"
        ax.plot(x, [r["example_passes"] for r in rs], style, color=color, label=label)
        bx.plot(x, [100 * r["holdout_change"] for r in rs], style, color=color, label=label)
        for r in rs:
            ok = r["after"]["per_subject"] == "forgotten"
            face = color if ok else "white"
            ax.plot(r["train_rows"], r["example_passes"], "o", color=color, mfc=face, ms=8)
            bx.plot(r["train_rows"], 100 * r["holdout_change"], "o", color=color, mfc=face, ms=8)
    re = sorted((r for r in records if r["label"] == "retrain"), key=lambda r: r["train_rows"])
    if re:
        ax.plot([r["train_rows"] for r in re], [0.05 * r["example_passes"] for r in re], ":", color="grey",
                label="5% of retraining")  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="training rows", ylabel="example passes",
           title="cost of one request (filled: every person forgotten)")  # fmt: skip
    bx.set(xscale="log", xlabel="training rows", ylabel="audit holdout loss change (%)",
           title="holdout change (filled: every person forgotten)")  # fmt: skip
    bx.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    bx.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", type=int, nargs="+", default=list(SCALES), choices=SCALES)
    ap.add_argument("--methods", nargs="+", default=["default", *FIRST_ORDER, "retrain"],
                    help="labels of methods() and 'retrain'")  # fmt: skip
    ap.add_argument("--sweep", nargs="+", metavar=("OPTION", "VALUE"),
                    help="run the default method with OPTION set to each VALUE instead")  # fmt: skip
    ap.add_argument("--set", nargs=2, action="append", default=[], metavar=("OPTION", "VALUE"),
                    help="an option added to the default method's (repeatable)")  # fmt: skip
    ap.add_argument("--tag", default="")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    catalogue = methods()
    extra = {k: parse_value(v) for k, v in args.set}
    runs: list[tuple[str, str, dict[str, Any]]] = []
    if args.sweep:
        key, values = args.sweep[0], [parse_value(v) for v in args.sweep[1:]]
        name, base = catalogue["default"]
        runs = [(f"{key}={v}", name, {**base, **extra, key: v}) for v in values]
    else:
        for label in args.methods:
            if label != "retrain":
                name, opts = catalogue[label]
                runs.append((label, name, {**opts, **(extra if label == "default" else {})}))
    records = []
    for scale in args.scales:
        case = Case(scale)
        before = case.before
        print(
            f"{scale}x: {case.info['rows']} before: AUC {before['auc']:.3f} {before['subjects']}", flush=True
        )
        todo = [("retrain", None, None)] if "retrain" in args.methods and not args.sweep else []
        for label, name, opts in todo + runs:
            r = (
                retrain_record(case)
                if label == "retrain"
                else run_method(case, label, name, copy.deepcopy(opts))
            )
            records.append(summarise(r, before))
            print(table([records[-1]]).splitlines()[-1], flush=True)
    tag = args.tag or ("sweep_" + args.sweep[0] if args.sweep else "")
    stem = "scaling" + (f"_{tag}" if tag else "")
    cmd = "python benchmarks/experiments/scaling.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = {
        "command": cmd.strip(),
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "machine": f"{platform.machine()} CPU, torch threads {args.threads}",
        "records": records,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS / f".{stem}.json.tmp"
    tmp.write_text(json.dumps(out, indent=1, default=float))
    tmp.replace(RESULTS / f"{stem}.json")
    plot(records, RESULTS / f"{stem}.png", f"{out['date']}: {out['command']}")
    print(table(records))


if __name__ == "__main__":
    main()
