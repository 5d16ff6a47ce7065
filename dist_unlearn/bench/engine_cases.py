"""Forgetting cases built the way users build theirs, for checking the Ray engine against one process.

Each case is a trained model, its loss and a retain / forget split, made from code in seconds (no download):

- ``mlp_class``: class-level forgetting. A 20-64-5 tanh MLP trained to zero loss (full-batch Adam) on 300
  rows of a 5-class tabular set; forget every row of class 0.
- ``mlp_sample``: sample-level forgetting. A 20-64-5 tanh MLP trained with early stopping (30 Adam steps,
  training loss 0.14) on 320 rows of overlapping classes; forget a random 10%.
- ``cnn_memorised``: a model trained to zero loss. A small GELU CNN on the 8x8 digits (sklearn) with 24 of
  360 labels flipped, trained until it fits them too; forget the flipped rows.
- ``tiny_lm``: a small causal LM. A GPT-2 from a config (2 layers, 32 wide, 64-token vocabulary, eager
  attention) that memorised 48 random 16-token documents; forget 8 of them.

:func:`build_case` returns an :class:`EngineCase`; ``loss_fn`` has a per-example path (the NPO objective and
the stop rule need one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from dist_unlearn.errors import ConfigError

CASES = ("mlp_class", "mlp_sample", "cnn_memorised", "tiny_lm")


@dataclass
class EngineCase:
    """A trained model with its loss, retain and forget sets."""

    name: str
    model: nn.Module
    loss_fn: Callable[[nn.Module, Any], torch.Tensor]
    retain: Any
    forget: Any
    train_loss: float
    """Mean training loss (retain + forget) of the model as built."""


class TupleCE:
    """Mean cross-entropy on ``(x, y)`` batches, with the per-example form NPO needs.

    No weight-decay term: under ZeRO-3 the parameters are partitioned outside the model's forward, so a loss
    must reach them only through the forward pass."""

    def per_example(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y, reduction="none")

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)


def _fit(model: nn.Module, loss_fn: Any, batch: Any, *, steps: int, lr: float, stop: float = 0.0) -> float:
    """Full-batch Adam for ``steps`` steps (or until the loss is below ``stop``); the final loss."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model, batch)
        if loss.item() < stop:
            break
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(loss_fn(model, batch))


def _split(x: torch.Tensor, y: torch.Tensor, forget: torch.Tensor) -> tuple[TensorDataset, TensorDataset]:
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[forget] = True
    return TensorDataset(x[~mask], y[~mask]), TensorDataset(x[mask], y[mask])


def _tabular(n: int, seed: int, spread: float = 1.2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = spread * torch.randn(5, 20, generator=g)
    y = torch.randint(0, 5, (n,), generator=g)
    return centers[y] + torch.randn(n, 20, generator=g), y


def mlp_class(seed: int = 0) -> EngineCase:
    x, y = _tabular(300, seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 5))
    loss_fn = TupleCE()
    loss = _fit(model, loss_fn, (x, y), steps=2000, lr=1e-2, stop=1e-3)
    retain, forget = _split(x, y, torch.nonzero(y == 0).reshape(-1))
    return EngineCase("mlp_class", model.eval(), loss_fn, retain, forget, loss)


def mlp_sample(seed: int = 0) -> EngineCase:
    x, y = _tabular(320, seed + 1, spread=0.6)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 5))
    loss_fn = TupleCE()
    loss = _fit(model, loss_fn, (x, y), steps=30, lr=1e-2)
    forget = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 2))[: len(y) // 10]
    retain, forget_set = _split(x, y, forget)
    return EngineCase("mlp_sample", model.eval(), loss_fn, retain, forget_set, loss)


class SmallCNN(nn.Module):
    """8x8 grey images -> 10 classes: conv 3x3 (8) - GELU - conv 3x3 (16, stride 2) - GELU - linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.c2(F.gelu(self.c1(x))))
        return self.fc(h.flatten(1))


def cnn_memorised(seed: int = 0) -> EngineCase:
    from sklearn.datasets import load_digits

    digits = load_digits()
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(digits.target), generator=g)[:360]
    x = torch.tensor(digits.images, dtype=torch.float32)[pick].unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)[pick]
    flipped = torch.arange(24)
    y[flipped] = (y[flipped] + 1 + torch.randint(0, 9, (24,), generator=g)) % 10
    torch.manual_seed(seed)
    model = SmallCNN()
    loss_fn = TupleCE()
    loss = _fit(model, loss_fn, (x, y), steps=3000, lr=3e-3, stop=1e-3)
    retain, forget = _split(x, y, flipped)
    return EngineCase("cnn_memorised", model.eval(), loss_fn, retain, forget, loss)


def tiny_lm(seed: int = 0) -> EngineCase:
    from transformers import GPT2Config, GPT2LMHeadModel

    from dist_unlearn.bench.models import ColumnRows
    from dist_unlearn.models.losses import CausalLMLoss

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16, bos_token_id=63,
                     eos_token_id=63, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    cfg._attn_implementation = "eager"
    model = GPT2LMHeadModel(cfg)
    ids = torch.randint(0, 63, (48, 16), generator=torch.Generator().manual_seed(seed))
    loss_fn = CausalLMLoss()
    # a few documents share their first token: ~0.02 is the floor of memorising them all
    loss = _fit(model, loss_fn, {"input_ids": ids}, steps=600, lr=2e-2, stop=0.025)
    retain, forget = ColumnRows(input_ids=ids[8:]), ColumnRows(input_ids=ids[:8])
    return EngineCase("tiny_lm", model.eval(), loss_fn, retain, forget, loss)


def build_case(name: str, seed: int = 0) -> EngineCase:
    """The case ``name`` (one of :data:`CASES`), built deterministically from ``seed``."""
    builders = {"mlp_class": mlp_class, "mlp_sample": mlp_sample, "cnn_memorised": cnn_memorised,
                "tiny_lm": tiny_lm}  # fmt: skip
    if name not in builders:
        raise ConfigError(f"unknown engine case {name!r}; choose one of {CASES}.")
    return builders[name](seed)
