"""The api's checks: options no method reads, strict types, max_steps, the loss_fn contract
and empty data sets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from dist_unlearn.api import unlearn
from dist_unlearn.errors import ConfigError, DataError
from dist_unlearn.methods import available_methods, get_method
from dist_unlearn.options import UnlearnOptions, readers


def ce(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


@pytest.fixture
def small():
    torch.manual_seed(0)
    X = torch.randn(30, 3, dtype=torch.float64)
    y = (X[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    return model, TensorDataset(X[6:], y[6:]), TensorDataset(X[:6], y[:6])


@pytest.mark.parametrize(
    ("method", "option", "value", "reader"),
    [
        ("finetune", "damping", 0.1, "damped_newton"),
        ("cure_newton", "lr", 1e-3, "finetune"),
        ("grad_ascent", "M", 1.0, "cure_newton"),
        ("damped_newton", "hvp_sample", 10, "cure_newton"),
        ("retrain", "kl_weight", 1.0, "scrub"),
    ],
)
def test_an_option_the_method_does_not_read_is_refused_naming_its_readers(
    small, method, option, value, reader
):
    model, retain, forget = small
    with pytest.raises(ConfigError, match=rf"does not read the option '{option}' \(read by [^)]*{reader}"):
        unlearn(model, ce, retain, forget, method=method, **{option: value})


def test_every_option_has_readers_that_exist():
    methods = set(available_methods())
    for name in UnlearnOptions.model_fields:
        who = readers(name)
        assert who == ["every method"] or set(who) <= methods, name


@pytest.mark.parametrize(
    ("option", "value"),
    [("M", True), ("max_steps", "2"), ("max_steps", True), ("lr", "1e-3"), ("krylov_max_iter", 3.0),
     ("damping", False), ("seed", 1.5)],
)  # fmt: skip
def test_strict_types(option, value):
    with pytest.raises(ConfigError, match=f"option {option}"):
        UnlearnOptions(**{option: value})


def test_ints_are_fine_for_floats():
    assert UnlearnOptions(M=10, damping=0).M == 10.0


def test_max_steps_zero_is_refused(small):
    model, retain, forget = small
    with pytest.raises(ConfigError, match=r"max_steps: .*greater than or equal to 1 \(got 0\)"):
        unlearn(model, ce, retain, forget, method="cure_newton", max_steps=0)


@pytest.mark.parametrize(
    ("loss_fn", "pattern"),
    [
        (nn.CrossEntropyLoss(), r"torch loss module \(CrossEntropyLoss\)"),
        (lambda logits, labels: F.cross_entropy(logits, labels), r"looks like a loss of \(logits, labels\)"),
        (F.cross_entropy, r"looks like a loss of \(input, target\)"),
        ("cross_entropy", "not a function"),
    ],
)
def test_loss_fn_contract(small, loss_fn, pattern):
    model, retain, forget = small
    with pytest.raises(ConfigError, match=pattern) as info:
        unlearn(model, loss_fn, retain, forget, method="finetune")
    assert "loss_fn(model, batch)" in str(info.value)


def test_a_model_batch_loss_passes_the_contract(small):
    model, retain, forget = small
    unlearn(model, lambda m, b: ce(m, b), retain, forget, method="finetune", max_steps=1)


@pytest.mark.parametrize("method", available_methods())
def test_an_empty_forget_set_is_a_data_error_for_every_method_that_reads_it(small, method):
    model, retain, _ = small
    empty = TensorDataset(torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0, dtype=torch.long))
    spec = get_method(method)
    opts = {"objective": "npo"} if spec.curvature else {}
    if not spec.curvature and "forget" not in spec.needs:  # finetune, retrain: the forget set is unused
        unlearn(model, ce, retain, empty, method=method, max_steps=1)
        return
    with pytest.raises(DataError, match=r"the forget set is empty \(0 examples\)"):
        unlearn(model, ce, retain, empty, method=method, max_steps=1, **opts)


def test_an_empty_retain_set_is_a_data_error(small):
    model, _, forget = small
    empty = TensorDataset(torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0, dtype=torch.long))
    with pytest.raises(DataError, match=r"the retain set is empty"):
        unlearn(model, ce, empty, forget, method="finetune")


def test_a_forget_objective_without_a_forget_set_is_a_data_error(small):
    model, retain, _ = small
    with pytest.raises(DataError, match=r"objective='grad_diff'.*needs the forget set"):
        unlearn(model, ce, retain, None, method="cure_newton", objective="grad_diff")


@pytest.mark.parametrize("opts", [{"objective": "npo"}, {"gradient": "influence"}, {"calibration": "unseen"}])
def test_options_that_read_the_forget_set_need_it_with_workers_too(small, opts):
    """The Ray engine runs the forgetting objectives, the influence gradient and the stop rule
    (tests/test_distributed_objectives.py); without a forget set they fail before any worker starts."""
    model, retain, forget = small
    if "calibration" in opts:
        opts = {"objective": "npo", "calibration": forget}
    with pytest.raises(DataError, match="needs the forget set"):
        unlearn(model, ce, retain, None, method="cure_newton", workers=2, **opts)


def test_an_empty_calibration_set_is_refused_before_any_work(small):
    model, retain, forget = small
    empty = TensorDataset(torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0, dtype=torch.long))
    with pytest.raises(DataError, match="needs a non-empty calibration set"):
        unlearn(model, ce, retain, forget, objective="npo", calibration=empty, workers=2)
