"""LoRA adapters via peft: unlearning updates only the adapter matrices."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from torch import nn

from dist_unlearn.errors import ConfigError, ModelError


def _linear_names(model: nn.Module) -> list[str]:
    names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
    if not names:
        raise ModelError(f"{type(model).__name__} has no nn.Linear layer for LoRA; pass target_modules.")
    return names


def apply_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16.0,
    target_modules: Sequence[str] | str | None = None,
    dropout: float = 0.0,
) -> nn.Module:
    """Wrap ``model`` with LoRA adapters (W + (alpha/r) B A on the target layers) and freeze everything else.

    Args:
        model: a transformers model or a plain ``nn.Module``.
        r: adapter rank (> 0).
        alpha: LoRA scaling numerator.
        target_modules: layer names to adapt; None: peft's default for known transformers architectures,
            every ``nn.Linear`` for a plain module.
        dropout: adapter dropout (off in the oracle anyway: it runs in eval mode).

    Returns:
        The ``peft.PeftModel``; exactly its ``lora_`` parameters have ``requires_grad=True`` (task heads are
        not
        made trainable: an oracle over it sees only the adapters).
    """
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ConfigError(f"LoRA rank r={r!r} must be a positive integer.")
    if not alpha > 0:
        raise ConfigError(f"LoRA alpha={alpha!r} must be positive.")
    from peft import LoraConfig, get_peft_model

    if target_modules is None and not hasattr(model, "config"):
        target_modules = _linear_names(model)
    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=list(target_modules) if isinstance(target_modules, list | tuple) else target_modules,
        lora_dropout=dropout,
        bias="none",
    )
    try:
        with warnings.catch_warnings():  # GPT-2's Conv1D layers: peft sets fan_in_fan_out itself
            warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")
            peft_model = get_peft_model(model, cfg)
    except ValueError as e:
        raise ModelError(
            f"cannot apply LoRA (target_modules={target_modules!r}) to {type(model).__name__}: {e}"
        ) from e
    for name, p in peft_model.named_parameters():
        p.requires_grad_("lora_" in name)
    if not any(p.requires_grad for p in peft_model.parameters()):
        raise ModelError(f"LoRA with target_modules={target_modules!r} created no adapter parameters.")
    return peft_model


def lora_from_options(model: nn.Module, lora: Any) -> nn.Module:
    """Apply LoRA from an options mapping {r, alpha, target_modules, dropout} (or True for the defaults)."""
    if lora is True:
        return apply_lora(model)
    if isinstance(lora, dict):
        from dist_unlearn.errors import reject_unknown

        reject_unknown("lora option", lora.keys(), ("r", "alpha", "target_modules", "dropout"))
        return apply_lora(model, **lora)
    raise ConfigError(f"lora={lora!r} must be a mapping like {{'r': 8, 'alpha': 16}} or True.")
