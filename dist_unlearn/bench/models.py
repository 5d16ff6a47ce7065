"""Small benchmark workloads built from code (no downloads): a model, its loss and retain rows.

``tokens`` is what one row costs in the cost model's units: sequence length for the language model, 1 for
the classifier (one example = one "token").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dist_unlearn.errors import ConfigError


@dataclass
class BenchWorkload:
    """A model, ``loss_fn(model, batch) -> mean loss``, the retain rows and their size in tokens."""

    name: str
    model: nn.Module
    loss_fn: Callable[[nn.Module, Any], torch.Tensor]
    data: torch.utils.data.Dataset
    tokens_per_row: int

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


class ColumnRows(torch.utils.data.Dataset):
    """Rows as dicts of tensors (what the workers' default collate stacks)."""

    def __init__(self, **columns: torch.Tensor) -> None:
        self.columns = columns
        self.n = len(next(iter(columns.values())))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.columns.items()}


def mlp_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of a classifier on {"x", "y"}."""
    return nn.functional.cross_entropy(model(batch["x"]), batch["y"])


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy of a causal LM on {"input_ids"} (shifted labels, computed here)."""
    ids = batch["input_ids"]
    logits = model(input_ids=ids).logits[:, :-1]
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


def make_workload(name: str, *, rows: int = 64, seed: int = 0, width: int | None = None) -> BenchWorkload:
    """Build a benchmark workload by name.

    Args:
        name: "mlp" (a 2-hidden-layer tanh classifier, 64 features, 10 classes) or "gpt2" (a GPT-2 built
            from a small config: 2 layers, 128 wide, 1024-token vocabulary, 64-token rows; eager attention so
            exact HVPs by double backward work).
        rows: retain rows (the full-batch gradient and HVP sample).
        seed: weights and data.
        width: hidden width (mlp) or embedding width (gpt2); None for the default.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if name == "mlp":
        h = width or 256
        model = nn.Sequential(nn.Linear(64, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, 10))
        x = torch.randn(rows, 64, generator=g)
        y = torch.randint(0, 10, (rows,), generator=g)
        return BenchWorkload("mlp", model, mlp_loss, ColumnRows(x=x, y=y), tokens_per_row=1)
    if name == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        d = width or 128
        cfg = GPT2Config(
            n_layer=2,
            n_embd=d,
            n_head=4,
            vocab_size=1024,
            n_positions=64,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        cfg._attn_implementation = "eager"
        model = GPT2LMHeadModel(cfg).eval()
        ids = torch.randint(0, cfg.vocab_size, (rows, 64), generator=g)
        return BenchWorkload("gpt2", model, lm_loss, ColumnRows(input_ids=ids), tokens_per_row=64)
    raise ConfigError(f"bench model {name!r} is unknown; allowed: 'mlp', 'gpt2'.")
