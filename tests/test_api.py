"""The public entry point ``dist_unlearn.unlearn``: bad input, result contents, dispatch."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dist_unlearn.api import UnlearnResult, unlearn
from dist_unlearn.errors import ConfigError, DataError, ModelError
from dist_unlearn.methods import available_methods, get_method
from dist_unlearn.options import UnlearnOptions


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


def test_registry_lists_every_contract_method():
    expected = {"cure_newton", "cure_newton_stochastic", "damped_newton", "pinv_newton", "finetune",
                "grad_ascent", "grad_diff", "npo", "scrub", "match_unseen", "retrain"}  # fmt: skip
    assert set(available_methods()) == expected
    curvature = {"cure_newton", "cure_newton_stochastic", "damped_newton", "pinv_newton"}
    assert set(available_methods(curvature=True)) == curvature
    assert get_method("npo").needs == {"forget"}


def test_unknown_method_is_rejected_with_a_suggestion(small):
    model, retain, forget = small
    with pytest.raises(
        ConfigError, match="unknown unlearning method 'cure_newtonn'. Did you mean 'cure_newton'"
    ):
        unlearn(model, ce, retain, forget, method="cure_newtonn")


@pytest.mark.parametrize(
    ("given", "suggested"),
    [("max_step", "max_steps"), ("dampng", "damping"), ("hvp_batchsize", "hvp_batch_size")],
)
def test_misspelled_option_is_rejected_with_the_close_name(small, given, suggested):
    model, retain, forget = small
    with pytest.raises(ConfigError, match=f"unknown option '{given}'. Did you mean '{suggested}'"):
        unlearn(model, ce, retain, forget, **{given: 3})


@pytest.mark.parametrize("M", [0, -1.0, 0.0])
def test_non_positive_M_is_rejected(small, M):
    model, retain, forget = small
    w0 = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ConfigError, match="option M: .*must be > 0"):
        unlearn(model, ce, retain, forget, M=M)
    assert all(torch.equal(a, b) for a, b in zip(w0, model.parameters(), strict=True))


@pytest.mark.parametrize(
    ("name", "value"), [("hvp", "hessian"), ("max_steps", -1), ("zero_stage", 4), ("tol", -1)]
)
def test_bad_option_values_name_the_option(name, value):
    with pytest.raises(ConfigError, match=f"option {name}"):
        UnlearnOptions(**{name: value})


def test_missing_data_and_bad_model_are_clear_errors(small):
    model, retain, forget = small
    with pytest.raises(DataError, match="needs the retain set"):
        unlearn(model, ce, None, forget, method="cure_newton")
    with pytest.raises(DataError, match="needs the forget set"):
        unlearn(model, ce, retain, None, method="grad_diff")
    with pytest.raises(ModelError, match="nn.Module"):
        unlearn(lambda x: x, ce, retain, forget)
    with pytest.raises(ModelError, match="loss_fn"):
        unlearn(model, None, retain, forget)  # a plain module has no default loss
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ModelError, match="no trainable parameters"):
        unlearn(model, ce, retain, forget, M=1.0)


def test_result_holds_model_steps_and_documented_stats(small):
    model, retain, forget = small
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    loader = DataLoader(retain, batch_size=7)
    res = unlearn(model, ce, loader, forget, method="cure_newton", M=1.0, max_steps=2, progress=True)
    assert isinstance(res, UnlearnResult) and res.model is model
    assert len(res.steps) == 2 and all(s.M == 1.0 for s in res.steps)
    for key in ("method", "wall_time", "peak_memory_mb", "total_hvps", "total_gradients", "final_loss",
                "final_grad_norm", "update_norm", "stop_reason", "options"):  # fmt: skip
        assert key in res.stats, key
    w1 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert res.stats["update_norm"] == pytest.approx(float((w1 - w0).norm()), rel=1e-12)
    X, y = retain.tensors
    with torch.no_grad():
        assert res.stats["final_loss"] == pytest.approx(float(F.cross_entropy(model(X), y)), rel=1e-10)
    assert res.stats["options"]["M"] == 1.0 and res.stats["options"]["max_steps"] == 2
    assert res.steps[0].to_dict()["step_norm"] == res.steps[0].step_norm


def test_workers_dispatch_to_the_distributed_engine(small, monkeypatch):
    model, retain, forget = small
    calls = []

    def run_distributed(model_, loss_fn, retain_, forget_, method, options):
        calls.append((method, options))
        return UnlearnResult(model_, [], {"method": method})

    fake = types.ModuleType("dist_unlearn.distributed")
    fake.run_distributed = run_distributed
    monkeypatch.setitem(sys.modules, "dist_unlearn.distributed", fake)
    res = unlearn(model, ce, retain, forget, method="cure_newton", workers=2, zero_stage=3, max_steps=4)
    assert res.stats == {"method": "cure_newton"}
    ((method, options),) = calls
    assert method == "cure_newton" and options.workers == 2 and options.zero_stage == 3
    assert options.max_steps == 4
    # first-order methods always run in-process
    res = unlearn(model, ce, retain, forget, method="finetune", workers=2, max_steps=1)
    assert len(calls) == 1 and res.stats["method"] == "finetune" and res.stats["options"]["workers"] is None


def test_hf_model_without_loss_fn_uses_the_default_loss():
    transformers = pytest.importorskip("transformers")
    import datasets

    cfg = transformers.BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=16, max_position_embeddings=16, num_labels=2)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg)
    ids = torch.randint(1, 20, (24, 6))
    rows = datasets.Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": [[1] * 6] * 24, "labels": (ids[:, 0] % 2).tolist()}
    )
    retain, forget = rows.select(range(4, 24)), rows.select(range(4))
    res = unlearn(model, None, retain, forget, method="cure_newton", M=10.0, max_steps=1, krylov_max_iter=10)
    assert res.stats["final_loss"] < res.steps[0].loss
    assert res.steps[0].hvps > 0


def test_hvp_option_reaches_the_oracle(small):
    from dist_unlearn.models import ClassificationLoss

    model, retain, forget = small
    state = {k: v.clone() for k, v in model.state_dict().items()}
    steps = {}
    for mode in ("exact", "fd", "ggn"):
        model.load_state_dict(state)
        w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        opts = {"M": 1.0, "max_steps": 1, "hvp": mode, "krylov_tol": 1e-10}
        res = unlearn(model, ClassificationLoss(), retain, forget, **opts)
        steps[mode] = torch.cat([p.detach().reshape(-1) for p in model.parameters()]) - w0
        assert res.stats["final_loss"] < res.steps[0].loss
        assert res.stats["options"]["hvp"] == mode
    assert torch.allclose(steps["fd"], steps["exact"], rtol=1e-4, atol=1e-7)  # FD approximates the Hessian
    assert not torch.allclose(steps["ggn"], steps["exact"], rtol=1e-3, atol=1e-6)  # Gauss-Newton differs
