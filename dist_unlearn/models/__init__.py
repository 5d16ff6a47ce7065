"""Models: loading (transformers Auto classes, local folders, nn.Module factories), LoRA via peft, per-task
losses exposing outputs for Gauss-Newton products, tokenizer checks and atomic saving."""

from dist_unlearn.models.loading import TASKS, load_model, resolve_dtype
from dist_unlearn.models.lora import apply_lora
from dist_unlearn.models.losses import (
    CausalLMLoss,
    ClassificationLoss,
    default_loss_fn,
    loss_for_task,
    task_of,
    unwrap,
)
from dist_unlearn.models.saving import load_plain_weights, save_model
from dist_unlearn.models.tokenizer import check_tokenizer

__all__ = [
    "TASKS",
    "load_model",
    "resolve_dtype",
    "apply_lora",
    "ClassificationLoss",
    "CausalLMLoss",
    "default_loss_fn",
    "loss_for_task",
    "task_of",
    "unwrap",
    "save_model",
    "load_plain_weights",
    "check_tokenizer",
]
