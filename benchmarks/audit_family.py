"""Per-subject or per-request false-alarm rate: the same models audited under both ``audit.family``
settings (probes off). The models: the demo's original, its retrained model and a delivered model
(``benchmarks/audit_reference.py`` builds the retrained one), and the fresh MiniLM case's original, retrained
and unlearned models (``benchmarks/audit_fresh_case.py``).

    python benchmarks/audit_family.py --demo runs/unlearn_demo/inputs --retrained /tmp/h14_ref/retrained \\
        --delivered runs/unlearn_demo/unlearned/model --fresh /tmp/h14_fresh --out /tmp/h14_fam \\
        --json benchmarks/results/audit_family.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

from dist_unlearn.demo.__main__ import demo_job
from dist_unlearn.job.audit_only import audit_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("demo", "retrained", "delivered", "fresh", "out"):
        ap.add_argument(f"--{name}", type=Path, required=True)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    fresh_job = yaml.safe_load((args.fresh / "job.yaml").read_text())
    cases = {
        "demo original": demo_job(args.demo, args.out / "do", model=str(args.demo / "model")),
        "demo retrained": demo_job(args.demo, args.out / "dr", model=str(args.retrained)),
        "demo delivered": demo_job(args.demo, args.out / "du", model=str(args.delivered)),
        "fresh original": {**fresh_job, "output_dir": str(args.out / "fo")},
        "fresh retrained": {**fresh_job, "model": str(args.fresh / "retrained"),
                            "output_dir": str(args.out / "fr")},
        "fresh unlearned": {**fresh_job, "model": str(args.fresh / "unlearned" / "model"),
                            "output_dir": str(args.out / "fu")},
    }  # fmt: skip
    out = {}
    for name, job in cases.items():
        for family in ("subject", "request"):
            res = audit_model(
                {**job, "probes": False, "audit": {"family": family}}, overwrite=True, log=lambda m: None
            )
            v = res.verdict
            row = {
                "status": v["status"],
                "subjects": {r["subject"]: r["status"] for r in v["subjects"]},
                "pooled": (v.get("pooled") or {}).get("status"),
            }
            out[f"{name} / {family}"] = row
            print(
                f"{name:18s} {family:8s} {v['status']:20s} {row['subjects']} pool {row['pooled']}", flush=True
            )
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
