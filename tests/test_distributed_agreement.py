"""The engine against one process on cases built the way users build theirs (dist_unlearn.bench.engine_cases).

Like with like: exact vs exact under ZeRO-2, FD vs FD under ZeRO-3; 2 CPU Ray workers (gloo) against the
in-process public API with the same options; cure_newton, 5 outer steps, automatic M; objectives ``retain``
and ``npo``. Bounds: the final updates within 1e-3 (relative), every outer step's decision the same, and at
most 1.5 driver round trips per Lanczos iteration over the whole run (final gather included). The engine
computes what the in-process oracle computes (distributed/sums.py), so the measured difference is 0 on all
16 runs (benchmarks/engine_agreement.py); the tests keep the issue's bound, not a tighter one.

The class-level case under ZeRO-3 (the one measured at 57% before) runs by default; the rest are slow.
"""

from __future__ import annotations

import sys

import cloudpickle
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("deepspeed")

cloudpickle.register_pickle_by_value(sys.modules[__name__])

ROUND_TRIPS_PER_ITERATION = 1.5
AGREEMENT = 1e-3


_CASES: dict[str, object] = {}


def _case(name: str):
    from dist_unlearn.bench.engine_cases import build_case

    if name not in _CASES:
        _CASES[name] = build_case(name)
    return _CASES[name]


def _check(name: str, objective: str, stage: int) -> dict:
    from dist_unlearn.bench.agreement import run_pair

    r = run_pair(_case(name), objective, stage)
    print(
        f"{name} {objective} ZeRO-{stage}: rel diff {r['rel_update_diff']:.2e}, "
        f"{r['round_trips_per_lanczos_iteration']:.3f} round trips / iteration, "
        f"by call {r['round_trips_by_call']}"
    )
    assert r["rel_update_diff"] <= AGREEMENT
    assert r["decisions_equal"], (r["accepted_dist"], r["accepted_local"])
    assert r["M_dist"] == pytest.approx(r["M_local"], rel=1e-9)
    assert r["hvps_dist"] == r["hvps_local"] and r["stop_reason_dist"] == r["stop_reason_local"]
    assert r["round_trips_per_lanczos_iteration"] <= ROUND_TRIPS_PER_ITERATION
    # the update is not trivially small (the comparison means something)
    assert r["update_norm_local"] > 1e-3
    return r


def _params(default: tuple[str, int] | None = None):
    out = []
    for objective in ("retain", "npo"):
        for stage in (3, 2):
            marks = () if (objective, stage) == default else (pytest.mark.slow,)
            out.append(pytest.param(objective, stage, marks=marks, id=f"{objective}-zero{stage}"))
    return out


@pytest.mark.parametrize("objective,stage", _params(default=("retain", 3)))
def test_class_level_forgetting_mlp_at_zero_loss(ray_local, objective, stage):
    """20-64-5 MLP trained to zero loss on a 5-class tabular set; forget class 0."""
    _check("mlp_class", objective, stage)


@pytest.mark.parametrize("objective,stage", _params())
def test_sample_level_forgetting_mlp(ray_local, objective, stage):
    """Early-stopped MLP on overlapping classes; forget a random 10% of the rows."""
    _check("mlp_sample", objective, stage)


@pytest.mark.parametrize("objective,stage", _params())
def test_cnn_memorised_flipped_labels(ray_local, objective, stage):
    """GELU CNN on 8x8 digits trained to zero loss with 24 flipped labels; forget the flipped rows."""
    _check("cnn_memorised", objective, stage)


@pytest.mark.parametrize("objective,stage", _params())
def test_tiny_causal_lm_documents(ray_local, objective, stage):
    """2-layer GPT-2 (config, eager attention) that memorised 48 random documents; forget 8."""
    _check("tiny_lm", objective, stage)
