r"""``match_unseen``: first-order descent on the retain loss plus each forget row's distance to unseen data.

The objective of the curvature route's ``objective="match_unseen"`` (:mod:`dist_unlearn.curvature.objective`),
minimised with the first-order loop (Adam by default) on paired mini-batches, one retain batch with each
forget batch:

    gamma l_r(retain batch) + alpha mean_{i in forget batch} c_i (1/2) d_i(w)^2,

d_i the distance of forget row i's loss to its bin of the calibration rows' losses and c_i its weight
(every subject alike; :mod:`dist_unlearn.targets`). The mean over a forget batch is an unbiased estimate of
F = sum_i v_i (1/2) d_i^2. The bins come from the stop rule's evaluations (it is always on: the method needs
``calibration=``), re-derived at every check whose weights stand, so they follow the unseen losses as the
model changes; the run stops when every subject is inside its band.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from dist_unlearn.cost import CostCounter
from dist_unlearn.data.batches import Pair, Rows
from dist_unlearn.errors import ConfigError
from dist_unlearn.methods._training import ModelRun, cycle, optimise
from dist_unlearn.methods.first_order_stop import first_order_stop
from dist_unlearn.methods.registry import register_method
from dist_unlearn.options import UnlearnOptions

DEFAULTS = {"epochs": 50, "lr": 1e-3, "batch_size": 8}
"""Defaults: Adam at lr 1e-3 on batches of 8 (the forgetting baselines' setting); up to 50 epochs over the
forget set, since the stop rule (always on) ends the run once every subject is in its band."""


@register_method("match_unseen", defaults=DEFAULTS, needs=("retain", "forget"))
def match_unseen(
    model: nn.Module, loss_fn: Any, retain: Any, forget: Any, options: UnlearnOptions
) -> ModelRun:
    """Move every forget row's loss into its bin of the unseen losses while holding the retain loss."""
    from dist_unlearn.curvature.objective import BinForgetLoss, IndexedRows
    from dist_unlearn.data import make_loader
    from dist_unlearn.targets import ForgetTargets

    if options.calibration is None:
        raise ConfigError(
            "method 'match_unseen' moves each forget row into the loss distribution of data the model never "
            "saw: pass calibration=<Dataset of such rows> (kept apart from the data you judge on)."
        )
    alpha, gamma = options.forget_weight, options.retain_weight
    targets = ForgetTargets(options.forget_subjects)
    cost = CostCounter()
    stop = first_order_stop(model, loss_fn, forget, options, cost, targets=targets)
    rows = IndexedRows(forget, options.collate_fn)
    penalty = BinForgetLoss(loss_fn, targets)

    def items(epoch: int):
        rb = cycle(retain, options, epoch) if gamma > 0 else None
        for fb in make_loader(
            rows, int(options.batch_size or 8), shuffle=True, seed=options.seed + 1000 * epoch,
            collate_fn=rows.collate,
        ):  # fmt: skip
            yield Pair((Rows(fb), next(rb) if rb is not None else None))

    def objective(item):
        (fb, rb) = item
        value = alpha * penalty(model, tuple(fb))
        if rb is not None:
            value = value + gamma * loss_fn(model, rb)
        return value

    steps = optimise(
        model, objective, items, options, method="match_unseen", epochs=options.epochs, cost=cost, stop=stop
    )
    out = {"cost": cost.as_dict(), "bin_updates": targets.updates}
    return ModelRun(model, steps, {**out, **stop.stats()})
