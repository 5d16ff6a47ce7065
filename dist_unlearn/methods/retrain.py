"""Retraining on the retain set: the gold standard every unlearning method is measured against.

The starting point is ``model_init()`` when given (a factory returning a fresh model, e.g. the task's model
constructor, or the pretrained checkpoint for a fine-tuned model), else a deep copy of the model with every
submodule's ``reset_parameters()`` called (and HF ``_init_weights`` applied) under
``torch.manual_seed(seed)``,
which is right for a model trained from scratch. It is then trained on the retain set for ``epochs`` with the
chosen optimiser (same loop as ``finetune``). The given model is not modified; the result holds the new one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dist_unlearn.cost import CostCounter
from dist_unlearn.errors import ConfigError, ModelError
from dist_unlearn.methods._training import ModelRun, loader, model_device, optimise
from dist_unlearn.methods.registry import register_method
from dist_unlearn.options import UnlearnOptions


def reinitialised_copy(model: nn.Module, seed: int) -> nn.Module:
    """A deep copy of ``model`` with freshly initialised parameters (same requires_grad flags).

    transformers models get their own ``_init_weights`` on every submodule; other modules get
    ``reset_parameters()`` on every submodule that has one.
    """
    fresh = copy.deepcopy(model)
    init_weights = getattr(fresh, "_init_weights", None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if callable(init_weights):  # HF PreTrainedModel
            fresh.apply(init_weights)
            return fresh
        resettable = [m for m in fresh.modules() if callable(getattr(m, "reset_parameters", None))]
        if not resettable:
            raise ModelError(
                "retrain: no submodule of the model has reset_parameters() and it is not a transformers "
                "model; give model_init=<callable returning a fresh model>."
            )
        for m in resettable:
            m.reset_parameters()
    return fresh


def _fresh_model(model: nn.Module, options: UnlearnOptions) -> nn.Module:
    if options.model_init is None:
        return reinitialised_copy(model, options.seed)
    init: Callable[[], Any] = options.model_init
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        fresh = init()
    if not isinstance(fresh, nn.Module):
        raise ConfigError(f"model_init returned a {type(fresh).__name__}; it must return a torch nn.Module.")
    return fresh.to(model_device(model))


@register_method("retrain", defaults={"epochs": 10, "lr": 1e-3, "batch_size": 32}, needs=("retain",))
def retrain(model: nn.Module, loss_fn: Any, retain: Any, forget: Any, options: UnlearnOptions) -> ModelRun:
    """Retrain from a fresh initialisation on the retain set (the oracle)."""
    fresh = _fresh_model(model, options)
    cost = CostCounter()
    steps = optimise(
        fresh,
        lambda b: loss_fn(fresh, b),
        lambda e: loader(retain, options, e),
        options,
        method="retrain",
        epochs=options.epochs,
        cost=cost,
    )
    return ModelRun(
        fresh,
        steps,
        {
            "init": "model_init" if options.model_init is not None else "reset_parameters",
            "cost": cost.as_dict(),
        },
    )
