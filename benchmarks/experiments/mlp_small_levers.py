"""Can CureNewton meet "ToW >= 0.95 at <= 10% of retraining" on the L2 MLP cases at 1,500 rows? Its levers,
one configuration at a time (the cases and the measurement of :mod:`mlp_cases`, scale 1).

    python benchmarks/experiments/mlp_small_levers.py

Prints one line per (case, configuration): ToW against the retrained model, example passes and wall time as
% of retraining's, HVPs, outer steps, stop reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mlp_cases as mc  # noqa: E402

CONFIGS: list[tuple[str, dict]] = [
    ("defaults", {}),
    ("3 steps", {"max_steps": 3}),
    ("kept basis", {"reuse_curvature": True}),
    ("kept basis, 3 steps", {"reuse_curvature": True, "max_steps": 3}),
    ("retain sample 512", {"retain_sample": 512}),
    ("retain sample 256", {"retain_sample": 256}),
    ("retain sample 512, HVP sample 128", {"retain_sample": 512, "hvp_sample": 128}),
]


def main() -> None:
    torch.set_num_threads(1)
    for name in ("random10", "class", "flipped40"):
        s = mc.Setting(name, 1)
        original, _, _ = s.train(TensorDataset(s.X, s.y))
        oracle, re_passes, re_wall = s.train(s.retain)
        ev_orig, ev_oracle = mc.evaluate(s, original), mc.evaluate(s, oracle)
        for label, opts in CONFIGS:
            res, ev, wall = mc.measure(s, original, "cure_newton", opts, ev_orig, ev_oracle)
            st = res.stats
            passes = 100 * st["cost"]["example_passes"] / re_passes
            print(f"{name:10s} {label:36s} ToW {ev['tow']:.3f}  passes {passes:5.1f}%  "
                  f"wall {100 * wall / re_wall:5.0f}%  HVPs {st['total_hvps']:4d}  "
                  f"steps {st['num_steps']:3d}  {st['stop_reason']}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
