"""Classifier metrics, MIA, parameter distances and resources vs independent hand computations."""

from __future__ import annotations

import itertools
import mmap
import time

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import roc_auc_score

from dist_unlearn.errors import ConfigError, DataError, ModelError
from dist_unlearn.eval import (
    accuracy,
    auc_score,
    classifier_reference,
    evaluate_classifier,
    js_divergence,
    kl_divergence,
    loss_mia_auc,
    measure_resources,
    min_k_scores,
    parameter_distance,
    predict,
    privleak,
    tug_of_war,
    update_norm,
)

torch.set_num_threads(1)


def brute_auc(members, nonmembers):
    wins = sum(1.0 if m > n else 0.5 if m == n else 0.0 for m, n in itertools.product(members, nonmembers))
    return wins / (len(members) * len(nonmembers))


# ---------------------------------------------------------------- pure metrics


def test_tug_of_war_known_accuracies():
    acc = {"retain": 0.98, "forget": 0.90, "test": 0.85}
    oracle = {"retain": 0.97, "forget": 0.80, "test": 0.86}
    expected = (1 - 0.10) * (1 - 0.01) * (1 - 0.01)
    assert tug_of_war(acc, oracle) == pytest.approx(expected, abs=1e-12)
    assert tug_of_war(oracle, oracle) == 1.0
    # without a test split: product over the two others
    assert tug_of_war({"retain": 1.0, "forget": 0.5}, {"retain": 0.5, "forget": 1.0}) == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="fraction"):
        tug_of_war({"retain": 98, "forget": 0.9}, oracle)
    with pytest.raises(ConfigError, match="retain"):
        tug_of_war({"forget": 0.9}, oracle)


def test_js_divergence_matches_scipy_squared():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=20)
    q = rng.dirichlet(np.ones(5), size=20)
    q[3] = [0.0, 0.0, 1.0, 0.0, 0.0]  # zeros handled
    per_row = js_divergence(p, q, reduction="none")
    ref = np.array([jensenshannon(a, b, base=2) ** 2 for a, b in zip(p, q, strict=True)])
    np.testing.assert_allclose(per_row, ref, rtol=1e-10, atol=1e-14)
    assert js_divergence(p, q) == pytest.approx(ref.mean(), rel=1e-10)
    ref_nats = np.mean([jensenshannon(a, b) ** 2 for a, b in zip(p, q, strict=True)])
    assert js_divergence(p, q, base=None) == pytest.approx(ref_nats, rel=1e-10)
    assert js_divergence(p, p) == pytest.approx(0.0, abs=1e-15)
    # disjoint supports: exactly 1 bit
    assert js_divergence([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0)
    with pytest.raises(DataError):
        js_divergence(p, q[:, :4])


def test_kl_divergence_by_hand():
    p, q = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    assert kl_divergence(p, q) == pytest.approx(0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1))


def test_auc_matches_brute_force_and_sklearn_with_ties():
    rng = np.random.default_rng(1)
    members = rng.integers(0, 6, size=17).astype(float)  # many ties
    nonmembers = rng.integers(0, 6, size=23).astype(float) - 1
    expected = brute_auc(members, nonmembers)
    assert auc_score(members, nonmembers) == pytest.approx(expected, abs=1e-12)
    labels = np.r_[np.ones(17), np.zeros(23)]
    assert auc_score(members, nonmembers) == pytest.approx(roc_auc_score(labels, np.r_[members, nonmembers]))
    # loss attack: lower loss => member
    assert loss_mia_auc(-members, -nonmembers) == pytest.approx(expected, abs=1e-12)
    assert auc_score([2.0, 3.0], [0.0, 1.0]) == 1.0
    with pytest.raises(DataError, match="empty"):
        auc_score([], [1.0])
    with pytest.raises(DataError, match="NaN"):
        auc_score([np.nan], [1.0])


def test_min_k_by_hand_and_privleak():
    lps = [np.array([-1.0, -5.0, -2.0, -0.5, -3.0]), np.array([-0.1])]
    # k=0.4 of 5 tokens -> the 2 lowest: (-5 - 3) / 2; one token -> itself
    np.testing.assert_allclose(min_k_scores(lps, k=0.4), [-4.0, -0.1])
    np.testing.assert_allclose(min_k_scores(lps, k=1.0), [np.mean(lps[0]), -0.1])
    with pytest.raises(ConfigError):
        min_k_scores(lps, k=0.0)
    assert privleak(0.6, 0.5) == pytest.approx(20.0)


# ---------------------------------------------------------------- models


def make_rows(n, seed, dim=4, classes=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return [{"id": i, "x": x[i], "label": int(y[i])} for i in range(n)]


def linear(seed, dim=4, classes=3):
    torch.manual_seed(seed)
    return torch.nn.Linear(dim, classes)


def np_forward(model, rows):
    x = np.stack([r["x"].numpy() for r in rows]).astype(np.float64)
    w = model.weight.detach().numpy().astype(np.float64)
    b = model.bias.detach().numpy().astype(np.float64)
    z = x @ w.T + b
    z -= z.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    y = np.array([r["label"] for r in rows])
    return probs, y, -np.log(probs[np.arange(len(y)), y])


def test_predict_matches_numpy_forward_for_lists_and_datasets():
    import datasets

    rows = make_rows(37, 0)
    model = linear(0)
    ref_p, ref_y, ref_l = np_forward(model, rows)
    pred = predict(model, rows, batch_size=8)
    np.testing.assert_allclose(pred.probs, ref_p, rtol=1e-5)
    np.testing.assert_array_equal(pred.labels, ref_y)
    np.testing.assert_allclose(pred.losses, ref_l, rtol=1e-4, atol=1e-6)
    # plus text and ragged list-of-string columns, which must not break batching
    ds = datasets.Dataset.from_list(
        [
            {
                "id": r["id"],
                "x": r["x"].tolist(),
                "label": r["label"],
                "text": f"row {r['id']}",
                "tags": ["t"] * (r["id"] % 3 + 1),
            }
            for r in rows
        ]
    )
    pred_ds = predict(model, ds, batch_size=10)
    np.testing.assert_allclose(pred_ds.probs, ref_p, rtol=1e-5)
    np.testing.assert_array_equal(pred_ds.labels, ref_y)
    # tuple rows + a custom predict_fn
    tuples = [(r["x"], r["label"]) for r in rows]
    pred_t = predict(model, tuples, batch_size=5, predict_fn=lambda m, b: m(b[0]) * 1.0)
    np.testing.assert_allclose(pred_t.probs, ref_p, rtol=1e-5)
    assert accuracy(ref_p, ref_y) == pytest.approx(np.mean(ref_p.argmax(1) == ref_y))


def test_hf_style_forward_drops_unaccepted_columns():
    class Tiny(torch.nn.Module):
        config = object()

        def __init__(self):
            super().__init__()
            self.emb = torch.nn.EmbeddingBag(10, 2)

        def forward(self, input_ids, attention_mask=None):
            return type("Out", (), {"logits": self.emb(input_ids)})()

    rows = [{"id": i, "input_ids": torch.tensor([i % 10, 1]), "labels": i % 2} for i in range(6)]
    pred = predict(Tiny(), rows, batch_size=4)
    assert pred.probs.shape == (6, 2) and pred.labels.tolist() == [0, 1, 0, 1, 0, 1]


def test_evaluate_classifier_against_hand_computation():
    retain, forget, test = make_rows(40, 1), make_rows(12, 2), make_rows(25, 3)
    model, oracle, original = linear(0), linear(1), linear(2)
    res = evaluate_classifier(
        model, retain=retain, forget=forget, test=test, oracle=oracle, original=original, batch_size=16
    )
    acc, acc_o, probs, probs_o, losses, losses_o = {}, {}, {}, {}, {}, {}
    for name, rows in (("retain", retain), ("forget", forget), ("test", test)):
        probs[name], y, losses[name] = np_forward(model, rows)
        probs_o[name], _, losses_o[name] = np_forward(oracle, rows)
        acc[name] = float(np.mean(probs[name].argmax(1) == y))
        acc_o[name] = float(np.mean(probs_o[name].argmax(1) == y))
        assert res[f"acc_{name}"] == pytest.approx(acc[name])
        assert res[f"oracle_acc_{name}"] == pytest.approx(acc_o[name])
        js = np.mean(
            [jensenshannon(a, b, base=2) ** 2 for a, b in zip(probs[name], probs_o[name], strict=True)]
        )
        assert res[f"js_{name}"] == pytest.approx(js, rel=1e-4, abs=1e-8)
        assert res[f"loss_{name}"] == pytest.approx(losses[name].mean(), rel=1e-4)
    tow = np.prod([1 - abs(acc[s] - acc_o[s]) for s in acc])
    assert res["tow"] == pytest.approx(tow)
    assert res["mia_auc"] == pytest.approx(brute_auc(-losses["forget"], -losses["test"]), abs=1e-9)
    assert res["oracle_mia_auc"] == pytest.approx(brute_auc(-losses_o["forget"], -losses_o["test"]), abs=1e-9)

    def flat(m):
        return np.concatenate([m.weight.detach().numpy().ravel(), m.bias.detach().numpy().ravel()]).astype(
            float
        )

    assert res["param_distance"] == pytest.approx(np.linalg.norm(flat(model) - flat(oracle)), rel=1e-6)
    assert res["update_norm"] == pytest.approx(np.linalg.norm(flat(model) - flat(original)), rel=1e-6)

    # the oracle against itself, via a precomputed reference: perfect scores
    ref = classifier_reference(oracle, retain=retain, forget=forget, test=test)
    same = evaluate_classifier(oracle, retain=retain, forget=forget, test=test, oracle=ref)
    assert same["tow"] == 1.0 and same["js_forget"] == pytest.approx(0.0, abs=1e-12)
    assert same["param_distance"] == 0.0 and same["mia_auc_gap"] == 0.0


def test_evaluate_classifier_bad_input():
    rows = make_rows(5, 0)
    with pytest.raises(DataError, match="label out of range"):
        evaluate_classifier(linear(0, classes=2), retain=rows, forget=rows, oracle=linear(1, classes=2))
    unlabeled = [{"x": r["x"]} for r in rows]
    with pytest.raises(DataError, match="no labels"):
        evaluate_classifier(linear(0), retain=unlabeled, forget=unlabeled, oracle=linear(1))
    with pytest.raises(DataError, match="empty"):
        predict(linear(0), [], batch_size=4)


def test_parameter_distance_and_mismatch():
    a, b = linear(0), linear(1)
    pairs = zip(a.parameters(), b.parameters(), strict=True)
    ref = np.sqrt(sum(float(((pa - pb).detach().double() ** 2).sum()) for pa, pb in pairs))
    assert parameter_distance(a, b) == pytest.approx(ref)
    assert update_norm(a.state_dict(), b.state_dict()) == pytest.approx(ref)
    assert parameter_distance(tuple(a.parameters()), tuple(a.parameters())) == 0.0
    a.bias.requires_grad_(False)
    only_w = float(((a.weight - b.weight).detach().double() ** 2).sum()) ** 0.5
    assert parameter_distance(a, b, trainable_only=True) == pytest.approx(only_w)
    with pytest.raises(ModelError, match="differ"):
        parameter_distance(a, torch.nn.Linear(4, 3, bias=False))
    with pytest.raises(ModelError, match="shape"):
        parameter_distance(a, torch.nn.Linear(5, 3))


def test_measure_resources_sees_time_and_memory():
    with measure_resources(interval=0.005) as usage:
        # 64 MiB of fresh pages from the kernel, every page touched: a numpy array could be served from heap
        # memory an earlier test freed and left resident, and then the process's RSS would not move at all
        block = mmap.mmap(-1, 64 * 2**20)
        for i in range(0, len(block), mmap.PAGESIZE):
            block[i] = 1
        # freed before the block ends: only the sampling thread can see it, so give it 100 intervals
        time.sleep(0.5)
        block.close()
    assert usage.wall_time_s >= 0.5
    assert usage.peak_rss_increase_bytes >= 48 * 2**20
    assert usage.peak_rss_bytes >= usage.rss_start_bytes
    assert usage.max_rss_lifetime_bytes >= usage.peak_rss_bytes * 0.9
    d = usage.as_dict()
    assert set(d) >= {"wall_time_s", "peak_rss_bytes", "cuda_peak_allocated_bytes"}
    # filled in even when the block raises
    with pytest.raises(RuntimeError):
        with measure_resources() as failed:
            raise RuntimeError("boom")
    assert failed.wall_time_s > 0


def test_diverged_model_gets_accuracies_and_none_not_an_error():
    retain, forget, test = make_rows(10, 1), make_rows(6, 2), make_rows(8, 3)
    broken = linear(0)
    with torch.no_grad():
        broken.weight[0, 0] = float("nan")  # every output row is NaN (pinv Newton blown up)
    res = evaluate_classifier(broken, retain=retain, forget=forget, test=test, oracle=linear(1))
    assert res["acc_retain"] == 0.0 and res["acc_forget"] == 0.0 and res["nonfinite_fraction_forget"] == 1.0
    assert res["js_forget"] is None and res["loss_forget"] is None and res["mia_auc"] is None
    assert res["oracle_mia_auc"] is not None and res["mia_auc_gap"] is None
    acc_o = evaluate_classifier(linear(1), retain=retain, forget=forget, test=test, oracle=linear(1))
    assert res["tow"] == pytest.approx(np.prod([1 - acc_o[f"acc_{s}"] for s in ("retain", "forget", "test")]))
