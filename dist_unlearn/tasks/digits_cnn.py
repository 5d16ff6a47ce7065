"""The CureNewton paper's small-CNN setting on scikit-learn's bundled ``load_digits``.

The paper uses FashionMNIST; no data can be downloaded here, so the 1,797 8x8 handwritten digits that ship
with
scikit-learn stand in for it. The network keeps the paper's shape (two 3x3 conv layers, pooling, two dense
layers), scaled to 8x8 inputs so that full-batch gradients and Hessian-vector products take milliseconds.
"""

from __future__ import annotations

import weakref
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from dist_unlearn.tasks.base import Task, TaskData, TaskParams, TrainRecipe, register_task

_ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU, "gelu": nn.GELU}


_SQUARED_NORMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _SquaredNormMixin:
    """Records the squared norm of the layer's own parameters while its forward runs.

    Under DeepSpeed ZeRO-3 a parameter is only materialised (gathered from its shards) inside the forward of
    the module that owns it; outside, ``p`` is an empty placeholder. The L2 term of the loss is therefore
    computed here, where the weights exist on every stage, and read back by :class:`LogitsCrossEntropy`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # kept outside the module's own state so copies and pickles of the model never carry a graph
        _SQUARED_NORMS[self] = sum((p * p).sum() for p in self.parameters(recurse=False) if p.requires_grad)
        return super().forward(x)


class _Conv2d(_SquaredNormMixin, nn.Conv2d):
    pass


class _Linear(_SquaredNormMixin, nn.Linear):
    pass


def squared_parameter_norm(model: nn.Module) -> torch.Tensor:
    """|w|^2 of the trainable parameters, as recorded by the layers during the last forward pass."""
    return sum(_SQUARED_NORMS.pop(m) for m in model.modules() if isinstance(m, _SquaredNormMixin))


class DigitsCNN(nn.Module):
    """conv(1->c) - act - conv(c->2c) - act - maxpool 2 - dense(32c->hidden) - act - dense(hidden->10).

    ``forward`` takes the flat 64-pixel vectors (batch x 64) or images (batch x 1 x 8 x 8).
    """

    def __init__(self, channels: int = 8, hidden: int = 32, n_classes: int = 10, activation: str = "relu"):
        super().__init__()
        act = _ACTS[activation]
        self.config = {
            "channels": channels,
            "hidden": hidden,
            "n_classes": n_classes,
            "activation": activation,
        }
        self.features = nn.Sequential(
            _Conv2d(1, channels, 3, padding=1),
            act(),
            _Conv2d(channels, 2 * channels, 3, padding=1),
            act(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), _Linear(2 * channels * 16, hidden), act(), _Linear(hidden, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, 8, 8).to(self.classifier[-1].weight.dtype)
        return self.classifier(self.features(x))


def digits_logits(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Logits of a batch (``pixels`` column)."""
    return model(torch.as_tensor(batch["pixels"]))


class LogitsCrossEntropy:
    """``loss(model, batch) = mean CE(logits, label) + (l2 / 2) |w|^2`` (w: trainable parameters).

    The L2 term makes the training objective the regularised ERM of certified / Newton unlearning: at the
    original optimum the weight decay balances the forget examples' gradient, so the retain objective's
    gradient
    is not zero after they are removed and a Newton-type step can move towards the retain optimum.
    ``outputs`` / ``from_outputs`` (logits, then the CE part) let the Gauss-Newton HVP and SCRUB use it.
    """

    def __init__(self, logits_fn: Any = digits_logits, l2: float = 0.0):
        self.logits_fn, self.l2 = logits_fn, float(l2)

    def outputs(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return self.logits_fn(model, batch)

    def from_outputs(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, torch.as_tensor(batch["label"]).to(logits.device))

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        loss = self.from_outputs(self.outputs(model, batch), batch)
        if self.l2 > 0:
            loss = loss + 0.5 * self.l2 * self._squared_norm(model)
        return loss

    @staticmethod
    def _squared_norm(model: nn.Module) -> torch.Tensor:
        """|w|^2 recorded during the forward (ZeRO-3 safe) for DigitsCNN, else read from the parameters."""
        if any(isinstance(m, _SquaredNormMixin) for m in model.modules()):
            return squared_parameter_norm(model)
        return sum((p * p).sum() for p in model.parameters() if p.requires_grad)


def digits_loss(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Mean cross-entropy of a batch (no regularisation)."""
    return LogitsCrossEntropy(digits_logits)(model, batch)


class DigitsParams(TaskParams):
    channels: int = Field(default=8, ge=1, le=256)
    hidden: int = Field(default=32, ge=1, le=4096)
    activation: Literal["relu", "tanh", "silu", "gelu"] = "relu"
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    n_samples: int | None = Field(default=None, ge=20, description="use only the first n digits (tests)")
    l2: float = Field(default=0.0, ge=0, description="L2 coefficient in the loss (training and unlearning)")


@register_task("digits_cnn")
class DigitsCNNTask(Task):
    """Columns: ``id`` (0..n-1), ``label`` (digit 0-9), ``pixels`` (64 floats in [0, 1])."""

    kind = "classification"
    Params = DigitsParams
    default_recipe = TrainRecipe(epochs=30, lr=1e-2, batch_size=64, weight_decay=0.0)
    params: DigitsParams

    def build_data(self) -> TaskData:
        import datasets
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        x = (digits.data / 16.0).astype(np.float32)
        y = digits.target.astype(np.int64)
        if self.params.n_samples is not None:
            x, y = x[: self.params.n_samples], y[: self.params.n_samples]
        x_tr, x_te, y_tr, y_te = train_test_split(
            x, y, test_size=self.params.test_fraction, random_state=self.seed, stratify=y
        )

        def ds(xs: np.ndarray, ys: np.ndarray) -> datasets.Dataset:
            return datasets.Dataset.from_dict(
                {"id": np.arange(len(ys)), "label": ys, "pixels": xs.tolist()},
                features=datasets.Features(
                    {
                        "id": datasets.Value("int64"),
                        "label": datasets.Value("int64"),
                        "pixels": datasets.Sequence(datasets.Value("float32"), length=64),
                    }
                ),
            )

        return TaskData(train=ds(x_tr, y_tr), test=ds(x_te, y_te))

    def build_model(self) -> nn.Module:
        torch.manual_seed(self.seed)
        p = self.params
        return DigitsCNN(channels=p.channels, hidden=p.hidden, activation=p.activation)

    predict_fn = staticmethod(digits_logits)  # module-level: pickles small for Ray workers

    @property
    def loss_fn(self) -> LogitsCrossEntropy:
        return LogitsCrossEntropy(digits_logits, self.params.l2)
