"""Distances between parameter vectors: the unlearned model vs the retrained one, and the update size.

``parameter_distance(a, b) = ||theta_a - theta_b||_2`` over all parameters (or the trainable ones), matched
by name and accumulated in float64 one tensor at a time (no flattened copy of the model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from dist_unlearn.errors import ModelError

ParamSource = torch.nn.Module | Mapping[str, torch.Tensor] | Sequence[torch.Tensor]


def named_tensors(source: ParamSource, *, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """``name -> tensor`` of a module's parameters, a state dict, or a tuple of tensors (named by index)."""
    if isinstance(source, torch.nn.Module):
        return {n: p.detach() for n, p in source.named_parameters() if p.requires_grad or not trainable_only}
    if isinstance(source, Mapping):
        return {str(n): torch.as_tensor(t).detach() for n, t in source.items()}
    if isinstance(source, torch.Tensor):
        return {"0": source.detach()}
    return {str(i): torch.as_tensor(t).detach() for i, t in enumerate(source)}


def parameter_distance(a: ParamSource, b: ParamSource, *, trainable_only: bool = False) -> float:
    """Euclidean distance ``||theta_a - theta_b||_2`` between two parameter sets.

    Args:
        a, b: modules, state dicts or tuples of tensors with the same names and shapes.
        trainable_only: only parameters with ``requires_grad`` (of module ``a``; e.g. LoRA adapters).

    Returns:
        The distance as a Python float (float64 accumulation).

    Raises:
        ModelError: the parameter names or shapes differ.
    """
    ta = named_tensors(a, trainable_only=trainable_only)
    tb = named_tensors(b, trainable_only=False)
    missing = sorted(set(ta) - set(tb))
    extra = sorted(set(tb) - set(ta)) if not trainable_only else []
    if missing or extra:
        raise ModelError(
            "parameter sets differ: "
            f"only in the first: {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
            f"only in the second: {extra[:5]}{' ...' if len(extra) > 5 else ''}."
        )
    total = 0.0
    for name, x in ta.items():
        y = tb[name]
        if x.shape != y.shape:
            raise ModelError(
                f"parameter {name!r} has shape {tuple(x.shape)} in one model, {tuple(y.shape)} in the other."
            )
        diff = x.to("cpu", torch.float64) - y.to("cpu", torch.float64)
        total += float(torch.sum(diff * diff))
    return total**0.5


def update_norm(model: ParamSource, original: ParamSource, *, trainable_only: bool = False) -> float:
    """Size of the total update ``||theta_unlearned - theta_original||_2`` (:func:`parameter_distance`)."""
    return parameter_distance(model, original, trainable_only=trainable_only)


def parameter_norm(source: ParamSource, *, trainable_only: bool = False) -> float:
    """``||theta||_2`` of a parameter set, to put distances in scale."""
    return (
        sum(
            float(torch.sum(t.to("cpu", torch.float64) ** 2))
            for t in named_tensors(source, trainable_only=trainable_only).values()
        )
        ** 0.5
    )


def comparable(a: ParamSource, b: ParamSource) -> bool:
    """True when :func:`parameter_distance` is defined between ``a`` and ``b`` (same names and shapes)."""
    ta, tb = named_tensors(a), named_tensors(b)
    return set(ta) == set(tb) and all(ta[n].shape == tb[n].shape for n in ta)
