"""The forgetting stop rule in the first-order loop (finetune, grad_ascent, grad_diff, npo, scrub).

The same rule as the curvature route (:class:`dist_unlearn.stopping.ForgetStopRule`: per subject when
subjects are given), judged at the weights as given and then every ``stop_every`` optimiser steps (None:
after each epoch), so that first-order methods compare with CureNewton at equal cost and with the same end:

- ``"stop"``: the run ends there (stop reason ``"forgotten"``);
- ``"continue"``: the weights and the optimiser state are kept as the last good point;
- ``"overshoot"`` (a subject pushed past unseen data): the weights and optimiser state go back to the last
  good point and the learning rate is halved (the first-order counterpart of refusing a cubic step and
  growing M: a shorter move); after ``max_rejections`` overshoots in a row the run ends at the last good
  point (stop reason ``"overshoot"``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from dist_unlearn.stopping import ForgetStopRule

LR_FACTOR = 0.5
"""The learning rate after an overshoot, relative to the one before it."""


class FirstOrderStop:
    """Runs the rule inside :func:`dist_unlearn.methods._training.optimise`.

    Args:
        rule: the stop rule (over the live model).
        every: check every this many optimiser steps (None: after each epoch).
        max_rejections: overshoots in a row after which the run ends at the last good point.

    Attributes:
        checks: the checks made (:class:`~dist_unlearn.stopping.StopCheck` dicts).
        stop_reason: "forgotten", "forget_worse_than_unseen" (before the first step), "overshoot" or "".
        lr_scale: the product of the learning-rate cuts so far.
    """

    def __init__(self, rule: ForgetStopRule, every: int | None, max_rejections: int = 20) -> None:
        self.rule, self.every, self.max_rejections = rule, every, int(max_rejections)
        self.checks: list[dict[str, Any]] = []
        self.stop_reason = ""
        self.lr_scale = 1.0
        self.overshoots = 0
        self._good: tuple[list[torch.Tensor], Any] | None = None

    def start(self, params: list[torch.Tensor]) -> bool:
        """Judge the weights as given; False when there is nothing to do (already forgotten or past)."""
        check = self.rule.check(-1)
        self.checks.append(check.to_dict())
        if check.decision != "continue":
            self.stop_reason = "forgotten" if check.decision == "stop" else "forget_worse_than_unseen"
            return False
        self._keep(params, None)
        return True

    def due(self, steps_done: int, epoch_end: bool) -> bool:
        """Whether a check is due after ``steps_done`` optimiser steps (``epoch_end``: an epoch ended)."""
        if self.every is None:
            return epoch_end
        return not epoch_end and steps_done % self.every == 0

    def after(self, step: int, params: list[torch.Tensor], opt: torch.optim.Optimizer | None) -> bool:
        """Judge the current weights after optimiser step ``step``; True when the run must end.

        On an overshoot the weights (and the optimiser's state) return to the last good point, in place.
        """
        check = self.rule.check(step)
        self.checks.append(check.to_dict())
        if check.decision == "stop":
            self.stop_reason = "forgotten"
            return True
        if check.decision == "continue":
            self.overshoots = 0
            self._keep(params, opt)
            return False
        self.overshoots += 1
        self._restore(params, opt)
        self.lr_scale *= LR_FACTOR
        if opt is not None:
            for group in opt.param_groups:
                group["lr"] = group["lr"] * LR_FACTOR
        if self.overshoots >= self.max_rejections:
            self.stop_reason = "overshoot"
            return True
        return False

    def _keep(self, params: list[torch.Tensor], opt: torch.optim.Optimizer | None) -> None:
        state = copy.deepcopy(opt.state_dict()) if opt is not None else None
        self._good = ([p.detach().clone() for p in params], state)

    def _restore(self, params: list[torch.Tensor], opt: torch.optim.Optimizer | None) -> None:
        assert self._good is not None, "start() keeps the first good point"
        weights, state = self._good
        with torch.no_grad():
            for p, q in zip(params, weights, strict=True):
                p.copy_(q)
        if opt is None:
            return
        lrs = [g["lr"] for g in opt.param_groups]
        if state is None:
            opt.state.clear()  # the last good point was the start: no moments yet
        else:
            opt.load_state_dict(copy.deepcopy(state))
        for group, lr in zip(opt.param_groups, lrs, strict=True):
            group["lr"] = lr

    def stats(self) -> dict[str, Any]:
        """What the run reports: ``stop_checks``, ``stop_rule`` and the learning-rate cut (+ ``stop_reason``
        when the rule ended the run)."""
        out = {
            "stop_checks": list(self.checks),
            "stop_rule": {**self.rule.describe(), "every": self.every or "epoch", "lr_scale": self.lr_scale},
        }
        if self.stop_reason:
            out["stop_reason"] = self.stop_reason
        return out


def first_order_stop(
    model: Any, loss_fn: Any, forget: Any, options: Any, cost: Any, targets: Any = None
) -> FirstOrderStop | None:
    """The stop rule of ``options`` for a first-order run (None without ``calibration``); its forward passes
    are counted in ``cost``; ``targets`` (the ``match_unseen`` bins) are set and kept up to date by it."""
    if options.calibration is None:
        return None
    from dist_unlearn.stopping import local_stop_rule

    rule = local_stop_rule(
        model, loss_fn, forget, options, batch_size=int(options.batch_size or 32), cost=cost, targets=targets
    )
    return FirstOrderStop(rule, options.stop_every, options.max_rejections)
