"""Pipeline pieces: forget rounds, staged (atomic) outputs, the trained-model cache, config plumbing."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch

from dist_unlearn.config import parse_config
from dist_unlearn.errors import ConfigError, DataError
from dist_unlearn.pipeline import ModelCache, plan_rounds, train_cost
from dist_unlearn.tasks import get_task
from dist_unlearn.tasks.base import TrainRecipe

BASE = {"task": {"name": "digits_cnn"}, "forget": {"fraction": 0.1}, "methods": ["cure_newton"]}


def _toy(n: int = 50) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {"id": list(range(n)), "label": [i % 5 for i in range(n)], "author": [i // 5 for i in range(n)]}
    )


def _forget(**kw):
    return parse_config({**BASE, "forget": kw}).forget


def test_single_round_matches_split_forget():
    ds = _toy()
    (r,) = plan_rounds(ds, _forget(fraction=0.2, seed=3))
    assert len(r.forget) == 10 and len(r.retain) == 40
    assert set(r.forget["id"]).isdisjoint(r.retain["id"])
    assert r.forgotten["id"] == r.forget["id"]
    (again,) = plan_rounds(ds, _forget(fraction=0.2, seed=3))
    assert again.forget["id"] == r.forget["id"]


def test_sequential_rounds_partition_the_forget_set_cumulatively():
    ds = _toy(100)
    rounds = plan_rounds(ds, _forget(fraction=0.2, seed=0, rounds=5))
    (single,) = plan_rounds(ds, _forget(fraction=0.2, seed=0))
    chunks = [set(r.forget["id"]) for r in rounds]
    assert all(len(c) == 4 for c in chunks)
    assert set().union(*chunks) == set(single.forget["id"])
    gone: set[int] = set()
    for r, chunk in zip(rounds, chunks, strict=True):
        gone |= chunk
        assert set(r.forgotten["id"]) == gone
        assert set(r.retain["id"]) == set(range(100)) - gone


def test_class_and_group_forgetting():
    ds = _toy()
    (r,) = plan_rounds(ds, _forget(label=2))
    assert set(r.forget["label"]) == {2} and 2 not in set(r.retain["label"])
    (g,) = plan_rounds(ds, _forget(fraction=0.2, group_column="author", seed=1))
    authors = set(g.forget["author"])
    assert len(authors) == 2 and len(g.forget) == 10  # whole authors, 20% of 10
    assert authors.isdisjoint(g.retain["author"])
    with pytest.raises(DataError, match="group_column"):
        plan_rounds(ds, _forget(fraction=0.2, group_column="nope"))
    with pytest.raises(DataError, match="exceeds"):
        plan_rounds(_toy(10), _forget(fraction=0.2, rounds=3))


def test_train_cost_counts_one_pass_per_example_per_epoch():
    cost = train_cost(TrainRecipe(epochs=3, lr=0.01, batch_size=16), 50)
    assert cost["example_passes"] == 150.0  # 3 epochs x 50 examples, 1 pass each (dist_unlearn.cost)
    assert cost["by_kind"]["train_step"]["calls"] == 3 * 4  # ceil(50 / 16) = 4 batches per epoch


def test_model_cache_returns_the_trained_weights_without_retraining(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    task = get_task("digits_cnn")({"channels": 2, "hidden": 4, "n_samples": 60}, seed=0)
    recipe = TrainRecipe(epochs=1, lr=0.01, batch_size=16)
    cache = ModelCache(tmp_path)
    m1, t1 = cache.get_or_train(
        "k", task, task.data().train, recipe, seed=0, progress=False, desc="t", log=print
    )
    assert [p.name for p in tmp_path.iterdir()] == ["k.pt"] and t1["wall_time_s"] > 0

    def no_training(*a, **k):
        raise AssertionError("cached model was retrained")

    monkeypatch.setattr(task, "train", no_training)
    m2, t2 = cache.get_or_train(
        "k", task, task.data().train, recipe, seed=0, progress=False, desc="t", log=print
    )
    assert t2 == t1
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p1, p2)
    fresh = task.build_model()
    assert not all(torch.equal(a, b) for a, b in zip(fresh.parameters(), m2.parameters(), strict=True))


def test_config_hash_and_distributed_options_flow_to_curvature_methods():
    cfg = parse_config(
        {
            **BASE,
            "methods": [{"name": "cure_newton", "max_steps": 2}, {"name": "finetune"}],
            "workers": 2,
            "zero_stage": 3,
            "deepspeed_config": {"train_batch_size": 8},
        }
    )
    cure, ft = cfg.methods
    assert cfg.method_options(cure) == {
        "max_steps": 2,
        "workers": 2,
        "zero_stage": 3,
        "deepspeed_config": {"train_batch_size": 8},
    }
    assert cfg.method_options(ft) == {}
    other = parse_config({**BASE, "forget": {"fraction": 0.2}})
    assert cfg.hash("task", "train") == other.hash("task", "train")
    assert cfg.hash("task", "train", "forget") != other.hash("task", "train", "forget")
    with pytest.raises(ConfigError, match="unique"):
        parse_config({**BASE, "methods": ["finetune", "finetune"]})
    two = parse_config({**BASE, "methods": ["finetune", {"name": "finetune", "label": "ft2", "epochs": 3}]})
    assert [m.display for m in two.methods] == ["finetune", "ft2"] and two.methods[1].options == {"epochs": 3}


def test_numeric_view_drops_text_columns():
    from dist_unlearn.pipeline import numeric_view

    ds = datasets.Dataset.from_dict(
        {
            "id": [0, 1],
            "question": ["a", "b"],
            "input_ids": [[1, 2], [3, 4]],
            "perturbed_answers": [["x"], ["y"]],
        }
    )
    assert numeric_view(ds).column_names == ["id", "input_ids"]
    assert np.asarray(numeric_view(ds)["input_ids"]).shape == (2, 2)
