"""The user's unlearning job (`dist-unlearn unlearn --config job.yaml`): bad input, outputs, audit, LoRA."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dist_unlearn.errors import ConfigError, DataError, ModelError, OutputError
from dist_unlearn.eval.subject_verdict import JOB_STATUSES
from dist_unlearn.job import parse_job, run_job

QA = "Question: {prompt}\nAnswer:"


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A tiny GPT-2 fine-tuned on 6 fictitious people (3 Q/A each), with holdout people and forget ids."""
    from dist_unlearn.demo.people import build_demo

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("lm")
    return build_demo(
        folder, n_people=6, n_holdout=3, n_forget=1, per_person=3, epochs=15, n_embd=32, n_layer=1
    )


def _job(paths, out, **over):
    cfg = {
        "model": str(paths["model"]),
        "data": {
            "path": str(paths["train"]),
            "prompt_column": "question",
            "response_column": "answer",
            "prompt_template": QA,
        },
        "holdout": str(paths["holdout"]),
        "forget": {"ids_file": str(paths["forget_ids"])},
        "method": {"name": "cure_newton", "max_steps": 1, "krylov_max_iter": 4, "eig_iterations": 3},
        "output_dir": str(out),
    }
    for k, v in over.items():
        if k == "data":
            cfg["data"] = {**cfg["data"], **v}
        elif v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    return cfg


def _quiet(msg: str) -> None:
    pass


# ------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda c: c.update(holdot=c.pop("holdout")),
            "unknown config key in 'top level' 'holdot'. Did you mean 'holdout'",
        ),
        (lambda c: c["data"].update(promt_column="q"), "Did you mean 'prompt_column'"),
        (lambda c: c.update(forget={"ids": [1], "where": {"a": 1}}), "exactly one of ids, ids_file, where"),
        (lambda c: c.update(method={"name": "cure_newtn"}), "Did you mean 'cure_newton'"),
        (lambda c: c.update(method={"name": "cure_newton", "max_step": 2}), "Did you mean 'max_steps'"),
        (lambda c: c.update(method={"name": "cure_newton", "M": -1.0}), "must be > 0"),
        (lambda c: c["data"].update(response_column=None), "both prompt_column and response_column"),
    ],
)
def test_job_config_errors_name_the_key_and_the_closest_allowed_one(lm, tmp_path, mutate, message):
    cfg = _job(lm, tmp_path / "out")
    mutate(cfg)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_job(cfg)


def test_default_method_is_the_single_constant(lm, tmp_path):
    from dist_unlearn.job.config import DEFAULT_METHOD

    cfg = parse_job(_job(lm, tmp_path / "out", method=None))
    assert cfg.method.name == DEFAULT_METHOD["name"]


# ------------------------------------------------------------------------------------------- bad input
def _no_tokenizer(lm, tmp):
    d = tmp / "no_tok"
    shutil.copytree(lm["model"], d)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (d / f).unlink(missing_ok=True)
    return {"model": str(d)}


def _file(tmp, name, text):
    p = tmp / name
    p.write_text(text)
    return str(p)


def _bigger_tokenizer(lm, tmp):
    """The model with a tokenizer that has 5 tokens more than the model's vocab_size (ids out of range)."""
    from transformers import AutoTokenizer

    d = tmp / "mismatch"
    shutil.copytree(lm["model"], d)
    tok = AutoTokenizer.from_pretrained(str(d))
    tok.add_tokens([f"<extra{i}>" for i in range(5)])
    tok.save_pretrained(str(d))
    return {"model": str(d)}


def _broken_tokenizer(lm, tmp):
    d = tmp / "broken_tok"
    shutil.copytree(lm["model"], d)
    (d / "tokenizer.json").write_text("{not json")
    return {"model": str(d)}


def _holdout_without_answer(lm, tmp):
    rows = [json.loads(x) for x in Path(lm["holdout"]).read_text().splitlines()]
    text = "".join(json.dumps({k: v for k, v in r.items() if k != "answer"}) + "\n" for r in rows)
    return {"holdout": _file(tmp, "h.jsonl", text)}


BAD = {
    "model missing": (lambda lm, t: {"model": str(t / "nope")}, ModelError, "does not exist"),
    "not a model": (
        lambda lm, t: {"model": str((t / "empty").mkdir() or t / "empty")},
        ModelError,
        "not a model folder",
    ),
    "no weights": (
        lambda lm, t: {
            "model": str(
                shutil.copytree(lm["model"], t / "m", ignore=shutil.ignore_patterns("*.safetensors"))
            )
        },
        ModelError,
        "no weight files",
    ),
    "model path is a file": (
        lambda lm, t: {"model": _file(t, "model.safetensors", "x")},
        ModelError,
        "is a file; give the folder",
    ),
    "tokenizer missing": (_no_tokenizer, ModelError, "no tokenizer"),
    "tokenizer unreadable": (_broken_tokenizer, ModelError, "cannot be loaded"),
    "tokenizer/model mismatch": (
        _bigger_tokenizer,
        ModelError,
        r"tokenizer/model mismatch: .* the tokenizer has (\d+) tokens but the model's vocab_size is",
    ),
    "data missing": (lambda lm, t: {"data": {"path": str(t / "none.jsonl")}}, DataError, "does not exist"),
    "data unreadable": (
        lambda lm, t: {"data": {"path": _file(t, "x.jsonl", "{oops\n")}},
        DataError,
        "could not be read",
    ),
    "data unknown format": (
        lambda lm, t: {"data": {"path": _file(t, "x.xlsx", "a")}},
        DataError,
        "unknown format '.xlsx'",
    ),
    "column absent": (
        lambda lm, t: {"data": {"prompt_column": "query"}},
        DataError,
        r"prompt_column='query' is not a column .*\['id', 'person', 'question', 'answer'\]",
    ),
    "holdout missing": (
        lambda lm, t: {"holdout": str(t / "unseen.jsonl")},
        DataError,
        "holdout path .*unseen.jsonl' does not exist",
    ),
    "holdout column absent": (
        _holdout_without_answer,
        DataError,
        r"response_column='answer' is not a column of the holdout .*\['id', 'person', 'question'\]",
    ),
    "forget ids file missing": (
        lambda lm, t: {"forget": {"ids_file": str(t / "ids.txt")}},
        DataError,
        "ids.txt",
    ),
    "id column absent": (lambda lm, t: {"data": {"id_column": "uid"}}, DataError, "id_column='uid'"),
    "forget ids absent": (
        lambda lm, t: {"forget": {"ids": [0, 999, 1000]}},
        DataError,
        r"\[999, 1000\] \(2 in all\) are absent",
    ),
    "empty forget set": (
        lambda lm, t: {"forget": {"ids_file": _file(t, "e.txt", "# none\n")}},
        DataError,
        "forget set is empty",
    ),
    "forget all rows": (lambda lm, t: {"forget": {"ids": list(range(18))}}, DataError, "covers all 18 rows"),
    "layout vs model": (
        lambda lm, t: {
            "data": {
                "prompt_column": None,
                "response_column": None,
                "text_column": "question",
                "label_column": "person",
            }
        },
        ConfigError,
        "is a causal_lm model but the data layout 'classification'",
    ),
    "too many workers": (
        lambda lm, t: {"workers": 999},
        ConfigError,
        "workers=999 but this machine has",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_fails_before_loading_the_model_and_writes_nothing(lm, tmp_path, monkeypatch, case):
    import dist_unlearn.job.model as job_model

    def loaded(*a, **k):
        raise AssertionError("the model was loaded before the input was validated")

    monkeypatch.setattr(job_model, "load_job_model", loaded)
    make, exc, message = BAD[case]
    over = make(lm, tmp_path)
    if "data" in over:
        over["data"] = {k: v for k, v in over["data"].items()}
    cfg = _job(lm, tmp_path / "out", **over)
    cfg["data"] = {k: v for k, v in cfg["data"].items() if v is not None}
    with pytest.raises(exc, match=message):
        run_job(cfg, log=_quiet)
    assert not (tmp_path / "out").exists()


def test_output_dir_with_user_files_is_refused_naming_overwrite(lm, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(OutputError, match="mine.txt"):
        run_job(_job(lm, out), log=_quiet)
    with pytest.raises(OutputError, match="even with --overwrite"):
        run_job(_job(lm, out), overwrite=True, log=_quiet)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_holdout_overlapping_training_data_warns_with_the_count(lm, tmp_path):
    cfg = _job(lm, tmp_path / "out", holdout=str(lm["train"]), workers=999)
    with pytest.warns(UserWarning, match="18 of the 18 holdout rows are identical to training rows"):
        with pytest.raises(ConfigError):  # stops right after the warning (cheap), nothing written
            run_job(cfg, log=_quiet)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- evidence
def test_utility_check_fails_a_rise_beyond_tolerance_and_never_a_fall():
    from dist_unlearn.job.audit import utility_checks

    chk = utility_checks(
        {"retain_loss": 0.04, "holdout_loss": 1.0}, {"retain_loss": 0.01, "holdout_loss": 1.2}
    )
    assert chk["retain_loss_change"] == pytest.approx(-0.75) and chk["retain_loss_within_tolerance"] is True
    assert chk["holdout_loss_change"] == pytest.approx(0.2) and chk["holdout_loss_within_tolerance"] is False
    assert utility_checks({"retain_loss": 1.0}, {"retain_loss": 1.05})["retain_loss_within_tolerance"] is True
    assert utility_checks({}, {})["holdout_loss_within_tolerance"] is None


def test_per_example_losses_equal_the_training_loss_row_by_row(lm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dist_unlearn.data.files import load_table
    from dist_unlearn.data.tokenize import TextFormat, tokenize_rows
    from dist_unlearn.job.evidence import per_example
    from dist_unlearn.models import CausalLMLoss

    model = AutoModelForCausalLM.from_pretrained(str(lm["model"])).eval()
    tok = AutoTokenizer.from_pretrained(str(lm["model"]))
    rows = tokenize_rows(
        load_table(lm["train"]),
        tok,
        TextFormat.infer(prompt_column="question", response_column="answer", prompt_template=QA),
    )
    losses, correct = per_example(model, rows, "causal_lm", pad_id=tok.pad_token_id, batch_size=5)
    assert correct is None and losses.shape == (18,)
    with torch.no_grad():
        ref = [
            float(CausalLMLoss()(model, {k: torch.tensor([rows[i][k]]) for k in rows.column_names}))
            for i in range(len(rows))
        ]  # one unpadded row at a time
    assert losses == pytest.approx(ref, rel=1e-5, abs=1e-6)


# ------------------------------------------------------------------------------------------- end to end
def test_in_process_job_writes_a_loadable_model_and_a_complete_audit(lm, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dist_unlearn.output import MANIFEST_NAME, sha256_file

    out = tmp_path / "out"
    res = run_job(_job(lm, out), log=_quiet)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            MANIFEST_NAME,
            "model",
            "audit.json",
            "audit.md",
            "audit_losses.png",
            "audit_subjects.png",
            "forget_ids.txt",
        ]
    )
    model = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    AutoTokenizer.from_pretrained(str(out / "model"))
    for name, p in model.named_parameters():
        assert torch.equal(p, dict(res.model.named_parameters())[name])
    original = AutoModelForCausalLM.from_pretrained(str(lm["model"]))
    moved = sum(
        float((a.detach() - b.detach()).pow(2).sum())
        for a, b in zip(model.parameters(), original.parameters(), strict=True)
    )
    assert moved > 0  # the retain-loss Newton step changed the weights

    a = json.loads((out / "audit.json").read_text())
    assert a["format"] == "dist_unlearn.audit/1"
    assert a["request"]["data"]["sha256"] == sha256_file(lm["train"])
    assert a["request"]["forget"]["rows"] == 3 and a["request"]["retain_rows"] == 15
    ids = a["request"]["forget"]["ids_file"]
    assert ids["count"] == 3 and ids["sha256"] == sha256_file(out / "forget_ids.txt")
    assert (out / "forget_ids.txt").read_text().split() == lm["forget_ids"].read_text().split()
    assert a["model"]["input"]["weight_sha256"]["model.safetensors"] == sha256_file(
        lm["model"] / "model.safetensors"
    )
    assert a["model"]["output"]["weight_sha256"]["model.safetensors"] == sha256_file(
        out / "model/model.safetensors"
    )
    assert a["method"]["name"] == "cure_newton" and a["method"]["options"]["max_steps"] == 1
    # max_steps 1: one accepted update; num_steps also counts the rejected ARC trials
    assert a["run"]["accepted_steps"] == 1 <= a["run"]["num_steps"]
    for when in ("before", "after"):
        ev = a["evidence"][when]
        for key in ("forget_loss", "retain_loss", "holdout_loss", "forget_vs_holdout_auc", "ks_pvalue"):
            assert isinstance(ev[key], float), (when, key)
        assert len(a["evidence"]["per_example_losses"][when]["forget"]) == 3
    assert a["verdict"]["status"] in JOB_STATUSES  # 3 forget rows, a small holdout: "undecided" is valid
    assert a["verdict"]["aggregate"]["thresholds"]["auc_tolerance"] == 0.1
    for key in ("torch", "transformers", "deepspeed", "ray"):
        assert a["provenance"]["versions"][key]
    assert a["run"]["start_utc"] <= a["run"]["end_utc"] and a["run"]["wall_time_s"] > 0
    card = (out / "model" / "README.md").read_text()
    assert "unlearning" in card and "../audit.json" in card and ids["sha256"] in card
    assert "It ran in one process" in card and str(out / "audit.json") in card
    md = (out / "audit.md").read_text()
    assert a["verdict"]["status"] in md and "forget_vs_holdout_auc" in md

    # a second job refuses to overwrite without --overwrite; with it, only the job's own files are replaced
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="--overwrite"):
        run_job(_job(lm, out), log=_quiet)
    run_job(
        _job(lm, out, method={"name": "grad_ascent", "epochs": 1, "lr": 1e-3}), overwrite=True, log=_quiet
    )
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "audit.json").read_text())["method"]["name"] == "grad_ascent"


def test_without_holdout_the_audit_says_what_it_could_not_check(lm, tmp_path):
    res = run_job(
        _job(lm, tmp_path / "out", holdout=None, method={"name": "grad_ascent", "epochs": 1}), log=_quiet
    )
    assert res.verdict["status"] == "unknown_without_holdout"
    assert res.audit["evidence"]["after"]["forget_vs_holdout_auc"] is None
    assert "no holdout" in res.audit["not_checked"][0]
    assert "Not checked" in (tmp_path / "out" / "audit.md").read_text()


def test_cli_unlearn_runs_the_job_and_prints_the_verdict(lm, tmp_path):
    import yaml
    from click.testing import CliRunner

    from dist_unlearn.cli import _register, cli

    _register()
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_job(lm, tmp_path / "ignored")))
    r = CliRunner().invoke(cli, ["unlearn", "--config", str(job), "--output", str(tmp_path / "o"), "-q"])
    assert r.exit_code == 0, r.output
    assert "before" in r.output and "after" in r.output and "cost:" in r.output
    assert (tmp_path / "o" / "audit.json").is_file() and not (tmp_path / "ignored").exists()
    r = CliRunner().invoke(cli, ["unlearn", "--config", str(job), "--output", str(tmp_path / "o")])
    assert r.exit_code != 0 and "OutputError" in r.output and "--overwrite" in r.output


def save_tiny_classifier(tokenizer_dir: Path, out: Path) -> Path:
    """A 1-layer GPT-2 sequence classifier (labels neg/pos, seed 0) saved with the tokenizer from
    ``tokenizer_dir``: a user's fine-tuned classifier folder."""
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=64,
        n_embd=16,
        n_layer=1,
        n_head=2,
        num_labels=2,
        id2label={0: "neg", 1: "pos"},
        label2id={"neg": 0, "pos": 1},
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    GPT2ForSequenceClassification(cfg).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def test_classifier_job_outputs_load_and_report_accuracy(lm, tmp_path):
    from transformers import AutoModelForSequenceClassification

    clf_dir = save_tiny_classifier(lm["model"], tmp_path / "clf")
    rows = [
        {"id": i, "text": f"{'good' if i % 2 else 'bad'} film number {i}", "label": "pos" if i % 2 else "neg"}
        for i in range(16)
    ]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:12]))
    (tmp_path / "h.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[12:]))
    job = {
        "model": str(clf_dir),
        "data": {"path": str(tmp_path / "t.jsonl"), "text_column": "text", "label_column": "label"},
        "holdout": str(tmp_path / "h.jsonl"),
        "forget": {"where": {"id": [0, 1, 2]}},
        "method": {"name": "cure_newton", "max_steps": 1, "krylov_max_iter": 4, "eig_iterations": 3},
        "output_dir": str(tmp_path / "out"),
        "audit": {"format_check": False},  # the fixture classifier is untrained: it fits no row better
    }
    res = run_job(job, log=_quiet)
    model = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "out" / "model"))
    assert model.config.id2label == {0: "neg", 1: "pos"}
    ev = res.audit["evidence"]["after"]
    assert {"forget_accuracy", "retain_accuracy", "holdout_accuracy"} <= set(ev)
    assert res.audit["request"]["forget"]["selector"] == {"where": {"id": [0, 1, 2]}}
    assert res.audit["model"]["input"]["kind"] == "classification"


def test_lora_adapter_job_changes_only_the_adapter_and_saves_a_peft_adapter(lm, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from dist_unlearn.models import apply_lora

    base_dir = lm["model"]
    torch.manual_seed(0)
    peft_model = apply_lora(
        AutoModelForCausalLM.from_pretrained(str(base_dir)), r=2, alpha=4, target_modules=["c_attn"]
    )
    with torch.no_grad():  # a "fine-tuned" adapter: B != 0
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter_dir))
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        base_dir
    )
    out = tmp_path / "out"
    job = _job(
        lm,
        out,
        model=str(adapter_dir),
        merged=True,
        method={"name": "npo", "epochs": 2, "lr": 1e-2, "batch_size": 4},
    )
    res = run_job(job, log=_quiet)
    assert res.audit["model"]["input"]["adapter"] is True
    assert not (out / "model" / "model.safetensors").exists()  # the adapter, not a full model
    before_ad = load_file(str(adapter_dir / "adapter_model.safetensors"))
    after_ad = load_file(str(out / "model" / "adapter_model.safetensors"))
    assert before_ad.keys() == after_ad.keys()
    assert any(not torch.equal(before_ad[k], after_ad[k]) for k in before_ad)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    base_ref = {k: v.clone() for k, v in base.state_dict().items()}
    loaded = PeftModel.from_pretrained(base, str(out / "model")).eval()
    for name, p in loaded.get_base_model().named_parameters():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            assert torch.equal(p, base_ref[key]), name  # base weights untouched
    merged = AutoModelForCausalLM.from_pretrained(str(out / "model" / "merged")).eval()
    x = torch.tensor([[3, 5, 7, 9]])
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=x).logits, loaded(input_ids=x).logits, atol=1e-5)


# ------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_demo_scale_job_moves_memorised_rows_from_not_forgotten_to_forgotten(tmp_path):
    """The demo's job as `make demo` runs it (30 people memorised, train loss ~0.01; its 4 people forgotten
    with the job's default method, subjects by person, the holdout split by person), in-process."""
    from dist_unlearn.demo.__main__ import EPOCHS, FORGET_PEOPLE, HOLDOUT_PEOPLE, PEOPLE, demo_job
    from dist_unlearn.demo.people import build_demo

    inputs = tmp_path / "in"
    build_demo(inputs, n_people=PEOPLE, n_holdout=HOLDOUT_PEOPLE, n_forget=FORGET_PEOPLE, epochs=EPOCHS)
    res = run_job(demo_job(inputs, tmp_path / "out"), log=_quiet)
    assert res.verdict["before_status"] == "not_forgotten"
    assert res.verdict["status"] == "forgotten", res.verdict["sentence"]
    assert {r["status"] for r in res.verdict["subjects"]} == {"forgotten"}
    assert res.audit["cost_against_retraining"]["percent_of_retraining"] <= 25
    assert abs(res.audit["checks"]["holdout_loss_change"]) <= 0.10


@pytest.mark.slow
def test_two_worker_zero3_job_loads_the_model_on_the_workers(lm, tmp_path):
    from transformers import AutoModelForCausalLM

    res = run_job(_job(lm, tmp_path / "out", workers=2, zero_stage=3), log=_quiet)
    run = res.audit["run"]
    assert run["workers"] == 2 and run["zero_stage"] == 3 and run["hvp_mode"] == "fd"
    out = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out" / "model"))
    orig = AutoModelForCausalLM.from_pretrained(str(lm["model"]))
    assert any(not torch.equal(a, b) for a, b in zip(out.parameters(), orig.parameters(), strict=True))
    # cure_newton minimises the retain loss: it must not go up on the retain sample
    ev = res.audit["evidence"]
    assert ev["after"]["retain_loss"] <= ev["before"]["retain_loss"] + 1e-6


def test_example_job_config_is_valid():
    from dist_unlearn.job import load_job

    cfg = load_job(Path(__file__).resolve().parents[1] / "configs" / "jobs" / "example.yaml")
    assert cfg.workers == 2 and cfg.zero_stage == 3 and cfg.forget.ids_file
    assert cfg.data.text_format().kind == "prompt_response"
