"""Does the default method pass its own audit? The job's routes on user cases, against the retrained model.

For each case (a folder the case builders wrote: ``model/``, ``retrained/``, ``train.jsonl``,
``holdout.jsonl``, ``forget_ids.txt``, ``case.json``) this runs the unlearn job
(:func:`dist_unlearn.job.run_job`: the audit with its attacks, extraction and robustness probes) once per
route, and audits the original and
the retrained model as given (:func:`dist_unlearn.job.audit_only.audit_model`). Routes:

- ``default``: the job's :data:`~dist_unlearn.job.config.DEFAULT_METHOD`;
- ``curvature``: CureNewton on the same objective with the same stop rule (its own step control: no lr),
  capped at retraining's example passes (a method that costs more has failed);
- ``curvature_equal_cost``: the same, capped at the default's example passes on that case;
- ``npo``, ``grad_diff``: the first-order baselines with the same per-subject stop rule and retain guard.

Prints one table per case and writes ``<json>`` with every audit's summary (per-subject rows, attack AUCs,
extraction, probes, cost against retraining).

    python benchmarks/cases/run_cases.py --cases /tmp/cases --json benchmarks/results/cases.json
    python benchmarks/cases/run_cases.py --cases /tmp/cases --case people_qa --route default --route npo
    python benchmarks/cases/run_cases.py --cases /tmp/cases --case lora_people --no-reference \
        --method 'rho0={"name": "match_unseen", "stop_within": 0.5, "retain_tolerance": 0.1, "sam_rho": 0}' \
        --json /tmp/levers.json         # a lever of the default, without re-auditing the references
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit_reference import summary  # noqa: E402

from dist_unlearn.job.config import DEFAULT_METHOD  # noqa: E402

STOP = {k: DEFAULT_METHOD[k] for k in ("stop_within", "retain_tolerance") if k in DEFAULT_METHOD}
"""The stop rule's settings every route shares (the default's)."""
ROUTES: dict[str, dict[str, Any]] = {
    "default": copy.deepcopy(DEFAULT_METHOD),
    "curvature": {"name": "cure_newton", "objective": "match_unseen", "krylov_max_iter": 10,
                  "bin_span": DEFAULT_METHOD.get("bin_span", 1.0), **STOP},
    "curvature_equal_cost": {"name": "cure_newton", "objective": "match_unseen", "krylov_max_iter": 10,
                             "bin_span": DEFAULT_METHOD.get("bin_span", 1.0), **STOP},
    "npo": {"name": "npo", "epochs": 100, "lr": 1e-3, "batch_size": 8, **STOP},
    "grad_diff": {"name": "grad_diff", "epochs": 100, "lr": 1e-3, "batch_size": 8, **STOP},
}  # fmt: skip


def job_for(folder: Path, out: Path, method: dict[str, Any] | None, model: str = "model") -> dict[str, Any]:
    """The case's job: its data layout, subject column, holdout split by subject, the fine-tune's epochs."""
    meta = json.loads((folder / "case.json").read_text())
    subject = meta["subject_column"]
    if "prompt_template" in meta:
        data = {"prompt_column": "question", "response_column": "answer",
                "prompt_template": meta["prompt_template"], "max_length": 128}  # fmt: skip
    else:
        data = {"text_column": "text", "label_column": "label", "max_length": 32}
    job = {
        "model": str(folder / model),
        "data": {"path": str(folder / "train.jsonl"), "id_column": "id", "subject_column": subject, **data},
        "holdout": str(folder / "holdout.jsonl"),
        "holdout_split": {"calibration_fraction": 0.5, "group_column": subject},
        "forget": {"ids_file": str(folder / "forget_ids.txt")},
        "training": {"epochs": meta["recipe"]["epochs"]},
        "output_dir": str(out),
    }
    if method is not None:
        job["method"] = method
    return job


def record(name: str, res: Any, wall: float) -> dict[str, Any]:
    """The audit's summary plus the numbers the targets read: holdout change, retained answers, cost."""
    out = summary(name, res)
    a = res.audit
    before, after = a["evidence"].get("before") or {}, a["evidence"]["after"]
    out["holdout_loss"] = [before.get("holdout_loss"), after.get("holdout_loss")]
    out["retain_loss"] = [before.get("retain_loss"), after.get("retain_loss")]
    out["extraction_before"] = before.get("extraction")
    keys = ("forget_accuracy", "holdout_accuracy", "retain_accuracy")
    out["accuracy"] = {k: [before.get(k), after.get(k)] for k in keys if k in after}
    run = a.get("run", {})
    out["cost"] = run.get("cost")
    out["cost_vs_retraining"] = run.get("cost_against_retraining") or a.get("cost_against_retraining")
    out["stop_reason"] = run.get("stop_reason")
    out["method"] = a.get("method")
    out["wall_s"] = wall
    print(line(name, out), flush=True)
    return out


def _pair(x: dict[str, Any]) -> str:
    return "-" if not x else f"{x['exact']:.2f} / {x['rouge_l']:.2f}"


def line(name: str, r: dict[str, Any]) -> str:
    """One table row: verdict, flags, attack AUCs, extraction, utility, benign relearning, cost."""
    flagged = [f"{s['subject']}: {s['status']}" for s in r["subjects"] if s["status"] != "forgotten"]
    ex = r.get("extraction") or {}
    fx, hx, rx = (ex.get(k) or {} for k in ("forget", "holdout", "retain"))
    hl = r["holdout_loss"]
    change = f"{hl[1] / hl[0] - 1:+.1%}" if hl[0] else "-"
    probes = (r.get("probes") or {}).get("probes", [])
    p = next((p for p in probes if p["probe"] == "benign_relearning" and not p.get("skipped")), None)
    relearn = "-" if p is None else f"{p['aucs']['loss']['probe'] - p['aucs']['loss']['delivered']:+.3f}"
    cost = (r.get("cost") or {}).get("example_passes")
    share = (r.get("cost_vs_retraining") or {}).get("percent_of_retraining")
    auc = r.get("attacks") or {}
    cells = [
        name, r["status"], ", ".join(flagged) or "-", f"{auc.get('loss', float('nan')):.3f}",
        f"{auc.get('min_k_plus_plus', float('nan')):.3f}", f"{_pair(fx)} vs {_pair(hx)}", _pair(rx), change,
        relearn, "-" if cost is None else f"{cost:,.0f}" + ("" if share is None else f" ({share:.0f}%)"),
        str(r.get("stop_reason")), f"{r['wall_s']:.0f}",
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| route | verdict | not forgotten | LOSS AUC | Min-K%++ AUC | extraction forget vs unseen (exact / "
    "ROUGE-L) | retained answers (exact / ROUGE-L) | holdout loss | benign relearning (LOSS AUC) | cost "
    "(passes, % retraining) | stop | wall s |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def run_case(
    folder: Path,
    routes: list[str],
    scratch: Path,
    workers: int | None,
    extra: dict[str, dict[str, Any]] | None = None,
    reference: bool = True,
) -> dict[str, Any]:
    """Audit the case's original and retrained models (``reference``), then run each route and each named
    method of ``extra`` (name -> method dict, e.g. one lever of the default changed)."""
    from dist_unlearn.job import run_job
    from dist_unlearn.job.audit_only import audit_model

    quiet = lambda m: None  # noqa: E731
    results: dict[str, Any] = {"case": json.loads((folder / "case.json").read_text())}
    for which in ("model", "retrained") if reference else ():
        t0 = time.perf_counter()
        res = audit_model(job_for(folder, scratch / f"audit_{which}", None, which), overwrite=True, log=quiet)
        results["original" if which == "model" else "retrained"] = record(
            which, res, time.perf_counter() - t0
        )
    for route in routes:
        method = copy.deepcopy(ROUTES[route])
        if route == "curvature":
            method["max_example_passes"] = float(results["case"]["retraining_example_passes"])
        if route == "curvature_equal_cost":
            default = results.get("default") or {}
            passes = (default.get("cost") or {}).get("example_passes")
            if passes is None:
                continue
            method["max_example_passes"] = float(passes)
        job = job_for(folder, scratch / route, method)
        if workers and method["name"].startswith("cure_newton"):
            job.update(workers=workers, zero_stage=3)
        t0 = time.perf_counter()
        res = run_job(job, overwrite=True, log=quiet)
        results[route] = record(route, res, time.perf_counter() - t0)
    for name, method in (extra or {}).items():
        t0 = time.perf_counter()
        res = run_job(job_for(folder, scratch / name, copy.deepcopy(method)), overwrite=True, log=quiet)
        results[name] = record(name, res, time.perf_counter() - t0) | {"method_given": method}
    return results


def named_method(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME=JSON`` (a ``--method`` argument) -> (NAME, the method dict)."""
    name, sep, body = text.partition("=")
    try:
        method = json.loads(body) if sep else None
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"--method {text!r}: the part after = is not JSON ({err})") from None
    if not name or not isinstance(method, dict) or "name" not in method:
        raise argparse.ArgumentTypeError(f'--method {text!r}: give NAME={{"name": "match_unseen", ...}}')
    return name, method


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=Path, required=True, help="folder holding the case folders")
    ap.add_argument("--case", action="append", help="case folder name (default: every case found)")
    ap.add_argument("--route", action="append", choices=sorted(ROUTES), help="default: every route")
    ap.add_argument(
        "--method",
        action="append",
        type=named_method,
        default=[],
        metavar="NAME=JSON",
        help="also run this method dict under NAME (e.g. the default with one lever changed)",
    )
    ap.add_argument("--no-reference", action="store_true", help="skip auditing the original / retrained")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/run_cases"))
    ap.add_argument("--workers", type=int, default=None, help="run the curvature routes on Ray workers")
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = args.case or sorted(p.parent.name for p in args.cases.glob("*/case.json"))
    routes = args.route or ([] if args.method else list(ROUTES))
    out = json.loads(args.json.read_text()) if args.json.is_file() else {}
    for name in names:
        print(f"\n##### {name}\n{HEADER}", flush=True)
        got = run_case(args.cases / name, routes, args.scratch / name, args.workers, dict(args.method),
                       reference=not args.no_reference)  # fmt: skip
        out.setdefault(name, {}).update(got)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
