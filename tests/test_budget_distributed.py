"""The ``max_example_passes`` cap on the Ray engine (2 CPU workers): the outer loop and the Krylov stop hook
see the RayOracle's summed worker counters, so the cap holds there as in-process."""

from __future__ import annotations

import copy
import sys

import cloudpickle
import pytest
import torch
from torch.utils.data import TensorDataset

ray = pytest.importorskip("ray")
pytest.importorskip("deepspeed")

cloudpickle.register_pickle_by_value(sys.modules[__name__])

ROWS = 40


def loss_fn(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)


@pytest.mark.slow
def test_cap_holds_on_two_workers(ray_local):
    import dist_unlearn

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(ROWS, 5), torch.randint(0, 3, (ROWS,)))
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    common = {"method": "cure_newton", "workers": 2, "max_steps": 4, "batch_size": 8, "M": 1.0}
    free = dist_unlearn.unlearn(copy.deepcopy(model), loss_fn, data, **common)
    full = free.stats["cost"]["example_passes"]
    assert free.stats["stop_reason"] != "budget"
    cap = 0.4 * full
    capped = dist_unlearn.unlearn(copy.deepcopy(model), loss_fn, data, max_example_passes=cap, **common)
    spent = capped.stats["cost"]["example_passes"]
    assert capped.stats["stop_reason"] == "budget"
    assert spent <= cap + 3 * ROWS  # at most one exact full-batch HVP over
    assert spent < full
