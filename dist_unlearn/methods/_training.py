"""The optimiser loop shared by the first-order methods and retraining, with NaN recovery.

Every optimiser step evaluates an objective on one work item (a batch, or a pair of forget/retain batches),
checks that the objective and its gradient are finite, remembers the weights as the last good point, then
steps. A non-finite value restores the last good weights and raises NumericalError.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dist_unlearn.cost import CostCounter
from dist_unlearn.data.batches import count_examples
from dist_unlearn.data.device import model_device, to_device
from dist_unlearn.errors import ModelError, NumericalError
from dist_unlearn.methods.base import StepRecord
from dist_unlearn.methods.budget import BUDGET_NOTE
from dist_unlearn.options import UnlearnOptions


@dataclass
class ModelRun:
    """What a model method returns: the unlearned model, its step records, and method-specific stats."""

    model: nn.Module
    steps: list[StepRecord]
    stats: dict[str, Any] = field(default_factory=dict)


def trainable(model: nn.Module, what: str) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ModelError(f"{what}: the model has no trainable parameters (requires_grad=False everywhere).")
    return params


def make_optimizer(params: list[nn.Parameter], options: UnlearnOptions) -> torch.optim.Optimizer:
    lr = float(options.lr if options.lr is not None else 1e-3)
    if options.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=options.momentum, weight_decay=options.weight_decay)
    if options.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=options.weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=options.weight_decay)


def loader(data: Any, options: UnlearnOptions, epoch: int, *, shuffle: bool = True) -> Iterable:
    """A shuffled loader over ``data`` whose order depends on (seed, epoch)."""
    from dist_unlearn.data import make_loader

    return make_loader(
        data,
        int(options.batch_size or 32),
        shuffle=shuffle,
        seed=options.seed + 1000 * epoch,
        collate_fn=options.collate_fn,
    )


def cycle(data: Any, options: UnlearnOptions, epoch: int) -> Iterator:
    """Endless batches of ``data`` (re-shuffled at each pass, nothing cached)."""
    rnd = 0
    while True:
        yield from loader(data, options, epoch * 7919 + rnd)
        rnd += 1


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen deep copy in eval mode (NPO reference, SCRUB teacher)."""
    import copy

    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def optimise(
    model: nn.Module,
    objective: Callable[[Any], torch.Tensor],
    epoch_items: Callable[[int], Iterable[Any]],
    options: UnlearnOptions,
    *,
    method: str,
    epochs: int,
    cost: CostCounter | None = None,
    stop: Any = None,
) -> list[StepRecord]:
    """Run ``epochs`` passes of ``epoch_items(epoch)``, one optimiser step per item (at most ``max_steps``).

    Args:
        model: trained in place (train mode during the loop, its previous mode restored after).
        objective: item -> scalar tensor to minimise (items are already on the model's device).
        epoch_items: epoch -> iterable of work items.
        options: lr, optimizer, momentum, weight_decay, grad_clip, max_steps, progress.
        method: name for messages.
        epochs: number of passes.
        cost: counts ``train_step`` examples (every example of every item, once per optimiser step);
            forwards of a frozen model (NPO reference, SCRUB teacher) are counted by the objective. With
            ``options.max_example_passes`` the loop stops before a step that would take ``cost`` over the
            cap (each step predicted to cost what the previous one did; the first: its examples).
        stop: a :class:`~dist_unlearn.methods.first_order_stop.FirstOrderStop` (the forgetting stop rule,
            checked before the first step and then every ``stop.every`` steps or after each epoch), or None.

    Returns:
        One StepRecord per optimiser step (loss = objective value, grad_norm before clipping,
        step_norm = |w_new - w_old|).

    Raises:
        NumericalError: non-finite objective or gradient; the weights are restored to the last good point.
    """
    params = trainable(model, method)
    device = model_device(model)
    opt: torch.optim.Optimizer | None = None  # built at the first step (torch.optim imports are slow)
    good = [p.detach().clone() for p in params]
    was_training = model.training
    model.train()
    records: list[StepRecord] = []
    start = time.perf_counter()
    bar = None
    if options.progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc=method, unit="step", leave=False, total=options.max_steps)
    cap, last_cost, stopped = options.max_example_passes, None, False
    ended = stop is not None and not stop.start(params)  # nothing to forget: no step at all
    try:
        k = 0
        for epoch in range(0 if ended else epochs):
            for item in epoch_items(epoch):
                if options.max_steps is not None and k >= options.max_steps:
                    break
                if cap is not None and cost is not None:
                    before = cost.example_passes
                    predicted = last_cost if last_cost is not None else float(count_examples(item))
                    if before + predicted > cap:
                        stopped = True
                        break
                t0 = time.perf_counter()
                if opt is None:
                    opt = make_optimizer(params, options)
                opt.zero_grad(set_to_none=True)
                value = objective(to_device(item, device))
                if cost is not None:
                    cost.add("train_step", count_examples(item))
                _check(value.detach(), params, good, method, k, "objective")
                value.backward()
                gsq = sum(float(p.grad.detach().double().pow(2).sum()) for p in params if p.grad is not None)
                gnorm = math.sqrt(gsq)
                if not math.isfinite(gnorm):
                    _restore(params, good)
                    raise NumericalError(
                        f"{method}: the gradient is non-finite at optimiser step {k}; the weights were "
                        "restored to the last good point (where the objective and gradient were finite)."
                    )
                with torch.no_grad():
                    for p, q in zip(params, good, strict=True):
                        q.copy_(p)
                if options.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, options.grad_clip)
                opt.step()
                with torch.no_grad():
                    dsq = sum(
                        float((p.detach() - q).double().pow(2).sum())
                        for p, q in zip(params, good, strict=True)
                    )
                dt = time.perf_counter() - t0
                records.append(
                    StepRecord(
                        step=k,
                        loss=float(value.detach()),
                        grad_norm=gnorm,
                        step_norm=math.sqrt(dsq),
                        M=None,
                        hvps=0,
                        gradients=1,
                        time=dt,
                        accepted=True,
                        krylov_iterations=0,
                        hard_case=False,
                        model_value=0.0,
                        elapsed=time.perf_counter() - start,
                        message=f"epoch {epoch}",
                    )
                )
                k += 1
                if cap is not None and cost is not None:
                    last_cost = cost.example_passes - before
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{float(value.detach()):.4g}")
                if stop is not None and stop.due(k, epoch_end=False):
                    ended = _judge(stop, k, params, opt, records)
                    if ended:
                        break
            if not ended and stop is not None and stop.due(k, epoch_end=True) and records:
                ended = _judge(stop, k, params, opt, records)
            if ended or stopped or (options.max_steps is not None and k >= options.max_steps):
                break
        if stopped and records:
            records[-1].message += BUDGET_NOTE
        # the final weights must be finite too (a huge step can overflow)
        if not all(bool(torch.isfinite(p).all()) for p in params):
            _restore(params, good)
            raise NumericalError(
                f"{method}: the weights became non-finite after optimiser step {k - 1}; restored to the last "
                "good point."
            )
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return records


def _judge(stop: Any, k: int, params, opt, records: list[StepRecord]) -> bool:
    """Run the stop rule after optimiser step k - 1 and note its decision on that step's record."""
    ended = stop.after(k - 1, params, opt)
    last = stop.checks[-1]
    records[-1].forget_auc, records[-1].stop_decision = float(last["auc"]), str(last["decision"])
    return ended


def _restore(params: list[nn.Parameter], good: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, q in zip(params, good, strict=True):
            p.copy_(q)


def _check(value: torch.Tensor, params, good, method: str, k: int, what: str) -> None:
    if value.numel() != 1:
        raise NumericalError(f"{method}: the {what} has shape {tuple(value.shape)}; it must be a scalar.")
    if not bool(torch.isfinite(value)):
        _restore(params, good)
        raise NumericalError(
            f"{method}: the {what} is {float(value)} (non-finite) at optimiser step {k}; the weights were "
            "restored to the last good point (where the objective and gradient were finite)."
        )
