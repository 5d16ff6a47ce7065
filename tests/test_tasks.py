"""Task data: deterministic per seed, well-formed, and (MiniLM) equal to the full pretrained model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dist_unlearn.errors import ConfigError
from dist_unlearn.tasks import available_tasks, get_task


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_registry_lists_the_three_tasks_and_suggests_close_names():
    assert {"digits_cnn", "minilm_sentiment", "tofu_gpt2"} <= set(available_tasks())
    with pytest.raises(ConfigError, match="Did you mean 'tofu_gpt2'"):
        get_task("tofu_gtp2")


def test_task_params_are_validated():
    cls = get_task("digits_cnn")
    with pytest.raises(ConfigError, match="Did you mean 'hidden'"):
        cls({"hiden": 3})
    with pytest.raises(ConfigError, match="test_fraction"):
        cls({"test_fraction": 1.2})


# ----- digits ----------
def test_digits_data_deterministic_per_seed_and_different_across_seeds():
    cls = get_task("digits_cnn")
    a, b, c = (cls({}, seed=s).data() for s in (0, 0, 1))
    assert a.train["pixels"] == b.train["pixels"] and a.test["label"] == b.test["label"]
    assert a.train["pixels"] != c.train["pixels"]
    from sklearn.datasets import load_digits

    assert len(a.train) + len(a.test) == len(load_digits().target)
    assert a.train["id"] == list(range(len(a.train)))
    x = np.asarray(a.train["pixels"])
    assert x.shape[1] == 64 and 0.0 <= x.min() and x.max() <= 1.0
    # same labels distribution in train and test (stratified split)
    tr = np.bincount(a.train["label"], minlength=10) / len(a.train)
    te = np.bincount(a.test["label"], minlength=10) / len(a.test)
    assert np.abs(tr - te).max() < 0.02


def test_digits_model_init_is_seeded_and_loss_is_cross_entropy():
    task = get_task("digits_cnn")({"channels": 2, "hidden": 8, "n_samples": 40}, seed=3)
    m1, m2 = task.build_model(), task.build_model()
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p1, p2)
    batch = {"pixels": torch.rand(5, 64), "label": torch.tensor([0, 1, 2, 3, 4])}
    logits = task.predict_fn(m1, batch)
    assert logits.shape == (5, 10)
    ref = -torch.log_softmax(logits, 1)[torch.arange(5), batch["label"]].mean()
    assert torch.allclose(task.loss_fn(m1, batch), ref)


# ----- MiniLM / VADER ----------
def test_vader_lexicon_labels_are_polarity():
    from dist_unlearn.tasks.minilm_sentiment import read_lexicon

    tokens, ratings = read_lexicon()
    assert len(tokens) > 7000 and len(tokens) == len(ratings) and np.all(ratings != 0)
    lex = dict(zip(tokens, ratings, strict=True))
    assert lex["good"] > 0 and lex["awful"] < 0


@pytest.mark.slow
def test_minilm_features_plus_top_layer_equal_the_full_pretrained_model():
    """Frozen lower layers precomputed + trainable top layer == all-MiniLM-L6-v2 run end to end."""
    task = get_task("minilm_sentiment")({"n_samples": 40, "trainable_layers": 2}, seed=0)
    data = task.data()
    again = get_task("minilm_sentiment")({"n_samples": 40, "trainable_layers": 2}, seed=0).data()
    assert data.train["token"] == again.train["token"]
    assert np.array_equal(np.asarray(data.train["hidden"]), np.asarray(again.train["hidden"]))
    assert all((r > 0) == bool(lab) for r, lab in zip(data.train["rating"], data.train["label"], strict=True))

    model = task.build_model()
    tok, enc = task._pretrained()
    toks = data.train["token"][:6]
    batch = tok(toks, padding="max_length", max_length=8, truncation=True, return_tensors="pt")
    with torch.no_grad():
        ref = enc(**batch).last_hidden_state
        h = torch.tensor(np.asarray(data.train["hidden"][:6], dtype=np.float32)).reshape(6, 8, -1)
        mask = batch["attention_mask"].float()
        add = (1 - mask)[:, None, None, :] * torch.finfo(torch.float32).min
        for layer in model.layers:
            h = layer(h, add)
    assert torch.allclose(h * mask[..., None], ref * mask[..., None], atol=1e-4)


# ----- TOFU ----------
def test_tofu_authors_and_qa_deterministic_per_seed():
    from dist_unlearn.tasks.tofu_gpt2 import make_authors, make_qa

    a, b, c = make_authors(6, 0), make_authors(6, 0), make_authors(6, 1)
    assert a == b and a != c
    assert len({x["name"] for x in a}) == 6
    rows = make_qa(a, 8, 3, 0)
    assert rows == make_qa(b, 8, 3, 0)
    assert len(rows) == 48
    for r in rows:
        assert len(r["perturbed_answers"]) == 3
        assert r["answer"] not in r["perturbed_answers"]
        assert r["paraphrased_answer"] not in r["perturbed_answers"]
        assert a[r["author"]]["name"] in r["question"]


def test_tofu_encoding_scores_only_answer_tokens_and_is_deterministic():
    params = {"n_authors": 4, "holdout_authors": 1, "questions_per_author": 3, "vocab_size": 300}
    t1, t2 = (get_task("tofu_gpt2")(params, seed=0) for _ in range(2))
    d1, d2 = t1.data(), t2.data()
    assert d1.train["input_ids"] == d2.train["input_ids"]
    assert len(d1.train) == 12 and len(d1.test) == 3 and set(d1.test["author"]) == {4}
    tok = t1.tokenizer()
    row = d1.train[0]
    answer_ids = [i for i, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != -100]
    assert tok.decode(answer_ids).strip() == row["answer"] + tok.eos_token
    model = t1.build_model()
    assert model.config.vocab_size == len(tok) and model.config.n_layer == 2
    batch = {k: torch.tensor(d1.train[k][:4]) for k in ("input_ids", "attention_mask", "labels")}
    loss = t1.loss_fn(model, batch)
    assert torch.isfinite(loss) and abs(loss.item() - np.log(len(tok))) < 1.0  # ~uniform at init
