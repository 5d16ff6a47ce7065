"""The Ray engine against one process on a case (:mod:`dist_unlearn.bench.engine_cases`), like with like.

:func:`run_pair` unlearns a copy of the case's model twice through the public API, once with
``workers=N`` (DeepSpeed ZeRO ranks on Ray) and once in-process, with the same options and the same HVP kind
(exact double backward under ZeRO 0/2, finite differences under ZeRO-3, where the in-process run is given
``hvp="fd"`` too), and reports how far the final updates are apart, whether every outer-step decision was
the same, and what the distributed run cost in driver round trips.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch


def _update(model: torch.nn.Module, start: torch.nn.Module) -> torch.Tensor:
    return torch.cat(
        [
            (p.detach() - q.detach()).reshape(-1).double()
            for p, q in zip(model.parameters(), start.parameters(), strict=True)
        ]
    )


def run_pair(
    case: Any, objective: str, zero_stage: int, *, workers: int = 2, max_steps: int = 5, **options: Any
) -> dict[str, Any]:
    """Unlearn ``case`` (an :class:`~dist_unlearn.bench.engine_cases.EngineCase`) on ``workers`` Ray ranks
    and in-process with cure_newton, ``max_steps`` outer steps, automatic M; compare.

    Returns:
        a dict: ``rel_update_diff`` = |d_dist - d_local| / |d_local|, ``decisions_equal`` (accepted flags of
        every outer step), the M sequences, HVP counts, the distributed run's round trips
        (``round_trips_per_lanczos_iteration``: every driver call of the run / Lanczos iterations, and the
        calls by method) and both runs' ``stop_reason``.
    """
    from dist_unlearn import unlearn

    hvp = "fd" if zero_stage == 3 else "exact"
    opts = {"max_steps": max_steps, "hvp": hvp, "objective": objective, **options}
    t0 = time.perf_counter()
    dist = unlearn(copy.deepcopy(case.model), case.loss_fn, case.retain, case.forget, method="cure_newton",
                   workers=workers, zero_stage=zero_stage, **opts)  # fmt: skip
    t1 = time.perf_counter()
    local = unlearn(copy.deepcopy(case.model), case.loss_fn, case.retain, case.forget, method="cure_newton",
                    **opts)  # fmt: skip
    t2 = time.perf_counter()
    d_dist, d_local = _update(dist.model, case.model), _update(local.model, case.model)
    tb = dist.stats["time_breakdown"]
    return {
        "case": case.name,
        "objective": objective,
        "zero_stage": zero_stage,
        "hvp": hvp,
        "workers": workers,
        "rel_update_diff": float((d_dist - d_local).norm() / d_local.norm().clamp_min(1e-300)),
        "update_norm_local": float(d_local.norm()),
        "decisions_equal": [s.accepted for s in dist.steps] == [s.accepted for s in local.steps],
        "accepted_dist": [bool(s.accepted) for s in dist.steps],
        "accepted_local": [bool(s.accepted) for s in local.steps],
        "M_dist": [s.M for s in dist.steps],
        "M_local": [s.M for s in local.steps],
        "hvps_dist": dist.stats["total_hvps"],
        "hvps_local": local.stats["total_hvps"],
        "stop_reason_dist": dist.stats["stop_reason"],
        "stop_reason_local": local.stats["stop_reason"],
        "round_trips": tb["driver_round_trips"],
        "round_trips_per_lanczos_iteration": tb["driver_round_trips_per_lanczos_iteration"],
        "posted_calls": tb["posted_calls"],
        "posted_calls_by_call": tb["posted_calls_by_call"],
        "round_trips_by_call": tb["round_trips_by_call"],
        "wall_s_dist": t1 - t0,
        "wall_s_local": t2 - t1,
    }
