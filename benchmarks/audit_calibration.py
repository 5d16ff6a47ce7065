"""How often does the audit flag a subject the model never saw? (the per-subject false-alarm rate, measured)

The per-subject band promises: a subject the model never saw is flagged by any test with probability at most
``audit.alpha`` (0.05), when the audit's unseen rows are drawn like it. This script measures that promise.
It builds the demo's inputs with ``--people`` more never-seen people than the demo has (the tokenizer is
trained on every person's text, the model on the demo's 30 training people only, as in the demo), keeps the
demo's 16 holdout people as the job's holdout, and judges each extra person as a forget subject against the
job's audit holdout rows with every test (LOSS, zlib, Min-K%, Min-K%++, extraction), the design effect
estimated as the job does (the audit part's and the calibration part's never-seen subjects). The share
flagged is the empirical false-alarm rate (overall and per test), with a binomial 95% interval.

    python benchmarks/audit_calibration.py --out /tmp/audit_calibration --people 200 \
        --json benchmarks/results/audit_calibration.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from dist_unlearn.demo.__main__ import EPOCHS, FORGET_PEOPLE, HOLDOUT_PEOPLE, PEOPLE, demo_job


def main() -> None:
    from scipy.stats import beta

    from dist_unlearn.demo.people import build_demo, write_jsonl
    from dist_unlearn.eval.subject_verdict import AuditSettings, judge_subjects
    from dist_unlearn.job.config import as_job
    from dist_unlearn.job.evidence import measure_model
    from dist_unlearn.job.judge import design_pool, subject_tests
    from dist_unlearn.job.recipe import JobState, check_inputs, load_rows

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="where the inputs are built (reused)")
    ap.add_argument("--people", type=int, default=200)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    inputs = args.out / "inputs"
    if not (inputs / "model" / "config.json").is_file():
        build_demo(
            inputs,
            n_people=PEOPLE,
            n_holdout=HOLDOUT_PEOPLE + args.people,
            n_forget=FORGET_PEOPLE,
            epochs=EPOCHS,
        )
        rows = [json.loads(x) for x in (inputs / "holdout.jsonl").read_text().splitlines()]
        keep = HOLDOUT_PEOPLE * 6
        write_jsonl(rows[:keep], inputs / "holdout.jsonl")
        write_jsonl(rows[keep:], inputs / "fresh.jsonl")
    fresh_file = inputs / "fresh.jsonl"
    rows = [json.loads(x) for x in fresh_file.read_text().splitlines()]
    job = JobState(cfg=as_job(demo_job(inputs, args.out / "unused")), log=lambda m: None)
    check_inputs(job)
    load_rows(job)
    from dist_unlearn.data.files import load_table
    from dist_unlearn.data.tokenize import tokenize_rows

    people_rows = tokenize_rows(load_table(fresh_file), job.tokenizer, job.fmt)
    sets = {"forget": people_rows, "holdout": job.rows["holdout"], "calibration": job.rows["calibration"]}
    m = measure_model(
        job.model, sets, "causal_lm", tokenizer=job.tokenizer, pad_id=job.pad_id, extraction=sets
    )
    subjects = [r["person"] for r in rows]
    unseen = job.subjects.of_holdout(job.split.audit)
    design = design_pool(m, unseen, job.subjects.of_holdout(job.split.calibration))
    verdict = judge_subjects(subject_tests(m), subjects, unseen, AuditSettings(), design)
    n = len(verdict["subjects"])
    flagged = len(verdict["failing"])
    by_test = {t: sum(t in r["flagged_by"] for r in verdict["subjects"]) for t in verdict["tests"]}

    def interval(k: int) -> list[float]:
        lo = beta.ppf(0.025, k, n - k + 1) if k else 0.0
        hi = beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
        return [float(lo), float(hi)]

    print(f"{n} never-seen people judged against {verdict['n_unseen']} audit holdout rows "
          f"(design effects {({t: round(v, 2) for t, v in verdict['inflation'].items()})})")  # fmt: skip
    print(
        f"flagged by any test: {flagged} = {flagged / n:.3f} (95% CI {interval(flagged)}), promised <= 0.05"
    )
    for t, k in by_test.items():
        print(f"  {t}: {k} = {k / n:.3f} (per-test alpha {verdict['per_test_alpha']:.3g})")
    q = np.array([r["quantile"] for r in verdict["subjects"]])
    print(
        f"LOSS quantiles of the never-seen people: mean {q.mean():.3f}, sd {q.std():.3f}, min {q.min():.3f}"
    )
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "people": n,
                    "flagged": flagged,
                    "rate": flagged / n,
                    "ci95": interval(flagged),
                    "by_test": by_test,
                    "inflation": verdict["inflation"],
                    "per_test_alpha": verdict["per_test_alpha"],
                    "loss_quantiles": q.tolist(),
                    "failing": verdict["failing"],
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
