"""The Ray engine against one process, like with like, on cases built the way users build theirs.

For each case of ``dist_unlearn.bench.engine_cases`` (class-level forgetting on an MLP at zero loss,
sample-level forgetting, a CNN that memorised flipped labels, a small causal LM), each objective (``retain``,
``npo``) and each ZeRO stage (2: exact HVPs on both sides; 3: finite differences on both sides), cure_newton
runs 5 outer steps with automatic M on 2 CPU workers and in-process (``dist_unlearn.bench.agreement``).
Printed and written: the relative difference of the final updates, whether every outer-step decision was the
same, HVPs, and the driver's round trips per Lanczos iteration over the whole run (final gather included)
with the calls by kind, and the calls posted without waiting.

    python benchmarks/engine_agreement.py --out benchmarks/results/engine_agreement.json
    python benchmarks/engine_agreement.py --cases mlp_class --objectives retain --stages 3 --out /tmp/a.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from dist_unlearn.bench.engine_cases import CASES

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--objectives", default="retain,npo")
    ap.add_argument("--stages", default="3,2")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/engine_agreement.json")
    a = ap.parse_args(argv)

    import ray
    import torch

    from dist_unlearn.bench.agreement import run_pair
    from dist_unlearn.bench.engine_cases import build_case

    torch.set_num_threads(1)
    ray.init(num_cpus=a.workers, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for name in a.cases.split(","):
            case = build_case(name)
            for objective in a.objectives.split(","):
                for stage in (int(s) for s in a.stages.split(",")):
                    r = run_pair(case, objective, stage, workers=a.workers)
                    rows.append(r)
                    print(
                        f"{name:14s} {objective:7s} ZeRO-{stage} {r['hvp']:5s} "
                        f"rel diff {r['rel_update_diff']:.1e} "
                        f"same decisions {r['decisions_equal']} HVPs {r['hvps_dist']}/{r['hvps_local']} "
                        f"round trips/iteration {r['round_trips_per_lanczos_iteration']:.3f} "
                        f"({r['round_trips']} calls, {r['posted_calls']} posted)",
                        flush=True,
                    )
    finally:
        ray.shutdown()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.node()} {platform.machine()} cpus={os.cpu_count()}",
        "command": " ".join(["python", *sys.argv]),
        "runs": rows,
    }
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
