"""The audit at the job level, on tiny GPT-2s built from one config: a model retrained without the subjects
passes and the untouched original fails; a mixture an aggregate AUC of 0.5 passes is flagged by name; the
probes never touch the delivered model; a wrong format is refused before unlearning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dist_unlearn.errors import DataError
from dist_unlearn.job.audit_only import audit_model

QA = "Question: {prompt}\nAnswer:"
EPOCHS = 40


def _train(tok, rows, *, seed: int = 0):
    from dist_unlearn.demo.people import fine_tune, small_gpt2

    model = small_gpt2(tok, n_embd=32, n_layer=1, seed=seed)
    fine_tune(model, rows, pad_id=tok.pad_token_id, epochs=EPOCHS, seed=seed)
    return model


def _save(model, tok, folder: Path) -> Path:
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def _distinct(pool: list[dict], k: int) -> list[dict]:
    """``k`` people sharing no first name, last name, city or job: a person the model never saw then
    shares nothing with the people it did (people who share a name look partly familiar)."""
    chosen, used = [], set()
    for p in pool:
        parts = {*p["name"].split(), p["city"], p["job"]}
        if not parts & used:
            chosen.append(p)
            used |= parts
    assert len(chosen) >= k, len(chosen)
    return chosen[:k]


def _push_past(model, rows, kept, held, pad_id: int) -> None:
    """Gradient difference (ascent on ``rows``, descent on ``kept``) until every one of ``rows`` has a
    higher loss than 90% of the unseen ``held`` rows: a subject pushed past unseen data, as over-unlearning
    does, while the model keeps fitting the other rows."""
    from dist_unlearn.data import pad_collate
    from dist_unlearn.job.evidence import per_example
    from dist_unlearn.models import CausalLMLoss

    collate, loss = pad_collate(pad_id), CausalLMLoss()
    push = collate([rows[i] for i in range(len(rows))])
    keep = collate([kept[i] for i in range(len(kept))])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(300):
        mine = per_example(model, rows, "causal_lm", pad_id=pad_id)[0]
        if mine.min() > np.quantile(per_example(model, held, "causal_lm", pad_id=pad_id)[0], 0.9):
            model.eval()
            return
        model.train()
        opt.zero_grad()
        (loss(model, keep) - loss(model, push)).backward()
        opt.step()
    raise AssertionError("the rows were not pushed past the unseen ones")


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    """10 people in the training data (6 Q/A rows each), 8 never-seen people in the holdout, no two sharing
    a name, city or job. Models from one config and one tokenizer: the original (all 10), the model
    retrained without the two people of the request, an untrained one, and a mixture: never saw person 2,
    still fits person 0, and person 1 pushed past the unseen people by gradient difference."""
    from dist_unlearn.data.files import load_table
    from dist_unlearn.data.tokenize import TextFormat, tokenize_rows
    from dist_unlearn.demo.people import (
        QA_TEMPLATE,
        make_people,
        qa_rows,
        small_gpt2,
        train_tokenizer,
        write_jsonl,
    )

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("people")
    everyone = _distinct(make_people(80, seed=3), 18)
    train, holdout = qa_rows(everyone[:10], 6), qa_rows(everyone[10:], 6, first_id=60)
    names = [p["name"] for p in everyone[:3]]
    write_jsonl(train, folder / "train.jsonl")
    write_jsonl(holdout, folder / "holdout.jsonl")
    tok = train_tokenizer(
        [QA_TEMPLATE.format(prompt=r["question"]) + " " + r["answer"] for r in train + holdout]
    )
    fmt = TextFormat(
        "prompt_response", prompt_column="question", response_column="answer", prompt_template=QA
    )
    rows = tokenize_rows(load_table(folder / "train.jsonl"), tok, fmt)
    held = tokenize_rows(load_table(folder / "holdout.jsonl"), tok, fmt)
    rows_of = lambda keep: rows.select([i for i, r in enumerate(train) if keep(r["person"])])  # noqa: E731
    mixture = _train(tok, rows_of(lambda p: p != names[2]))
    _push_past(
        mixture,
        rows_of(lambda p: p == names[1]),
        rows_of(lambda p: p not in names[1:]),
        held,
        tok.pad_token_id,
    )
    return {
        "folder": folder,
        "names": names,
        "original": _save(_train(tok, rows), tok, folder / "original"),
        "retrained": _save(_train(tok, rows_of(lambda p: p not in names[:2])), tok, folder / "retrained"),
        "mixture": _save(mixture, tok, folder / "mixture"),
        "untrained": _save(small_gpt2(tok, n_embd=32, n_layer=1, seed=0), tok, folder / "untrained"),
    }  # fmt: skip


def _job(p, model: str, out: Path, forget: list[str], **over) -> dict:
    job = {
        "model": str(p[model]),
        "data": {"path": str(p["folder"] / "train.jsonl"), "prompt_column": "question",
                 "response_column": "answer", "prompt_template": QA},
        "holdout": str(p["folder"] / "holdout.jsonl"),
        "holdout_split": {"calibration_fraction": 0.0},
        "forget": {"where": {"person": forget}},
        "probes": False,
        "output_dir": str(out),
    }  # fmt: skip
    job.update(over)
    return job


def _quiet(msg: str) -> None:
    pass


def test_the_model_retrained_without_the_subjects_passes_and_the_original_fails(people, tmp_path):
    two = people["names"][:2]
    retrained = audit_model(_job(people, "retrained", tmp_path / "r", two), log=_quiet)
    original = audit_model(_job(people, "original", tmp_path / "o", two), log=_quiet)
    assert retrained.verdict["status"] == "forgotten", retrained.verdict["sentence"]
    assert original.verdict["status"] == "not_forgotten"
    assert original.verdict["failing"] == two
    assert all(r["status"] == "recognisable" for r in original.verdict["subjects"])
    assert all(len(r["flagged_by"]) >= 3 for r in original.verdict["subjects"])  # several tests agree
    assert retrained.audit["subjects"]["column"] == "person"
    assert retrained.audit["subjects"]["source"] == "forget.where"
    written = json.loads((tmp_path / "o" / "audit.json").read_text())
    assert written["audit_only"] and written["verdict"]["status"] == "not_forgotten"
    assert not (tmp_path / "o" / "model").exists() and (tmp_path / "o" / "audit_subjects.png").is_file()
    md = (tmp_path / "o" / "audit.md").read_text()
    assert "## Subjects" in md and two[0] in md and "recognisable" in md


def test_a_mixture_that_the_aggregate_auc_passes_is_flagged_subject_by_subject(people, tmp_path):
    """One subject still memorised, one pushed past every unseen row, one never seen: the aggregate loss
    AUC is near 0.5, the per-subject verdict names the two that fail."""
    names = people["names"]
    res = audit_model(_job(people, "mixture", tmp_path / "m", names), log=_quiet)
    ver = res.verdict
    assert abs(ver["aggregate"]["target_auc"] - 0.5) < 1e-12
    assert ver["aggregate"]["auc_gap"] <= 0.1  # the aggregate AUC criterion alone would pass
    got = {r["subject"]: r["status"] for r in ver["subjects"]}
    assert got == {names[0]: "recognisable", names[1]: "conspicuous", names[2]: "forgotten"}
    assert ver["status"] == "partially_forgotten" and ver["failing"] == names[:2]
    assert f"{names[0]} (recognisable" in ver["sentence"] and f"{names[1]} (conspicuous" in ver["sentence"]


def test_probes_leave_the_delivered_model_files_and_weights_bit_identical(people, tmp_path):
    from dist_unlearn.output import sha256_file

    files = {f.name: sha256_file(f) for f in people["original"].iterdir()}
    res = audit_model(
        _job(people, "original", tmp_path / "p", people["names"][:2], probes={"relearn_max_passes": 24}),
        log=_quiet,
    )
    assert {f.name: sha256_file(f) for f in people["original"].iterdir()} == files
    pr = res.audit["probes"]
    assert pr["enabled"] and pr["delivered_model_unchanged"]
    from dist_unlearn.job.robustness import parameters_sha256

    assert parameters_sha256(res.model) == pr["delivered_model_sha256"]
    names = [p["probe"] for p in pr["probes"]]
    assert names == ["benign_relearning", "targeted_relearning", "quantize_8bit", "quantize_4bit"]
    benign, targeted = pr["probes"][0], pr["probes"][1]
    assert benign["rows"] == 48 and benign["stop_reason"] == "budget"  # capped at 24 example passes
    assert targeted["forget_rows_trained"] == 6 and targeted["forget_rows_judged"] == 6
    assert targeted["unseen_rows_trained"] == 24 and targeted["unseen_rows_judged"] == 24
    for p in pr["probes"]:
        assert p["status"] in ("forgotten", "partially_forgotten", "not_forgotten", "undecided")
        assert p["aucs"]["loss"]["probe"] is not None
    assert pr["cost"]["by_role"]["probe"]["example_passes"] > 0 and set(pr["cost"]["by_role"]) == {"probe"}


def test_rows_the_model_does_not_fit_better_than_the_holdout_are_refused_before_unlearning(
    people, tmp_path, monkeypatch
):
    """A model that fits its training rows no better than unseen rows under the configured format (here:
    an untrained one, as a wrong prompt_template makes a fine-tuned LM look) is refused with both numbers
    and the format keys, before any unlearning and with nothing written."""
    import dist_unlearn
    from dist_unlearn.job import run_job

    def unlearned(*a, **k):
        raise AssertionError("unlearning started before the format was checked")

    monkeypatch.setattr(dist_unlearn, "unlearn", unlearned)
    job = _job(people, "untrained", tmp_path / "f", people["names"][:2])
    with pytest.raises(DataError, match=r"mean loss [\d.]+ on 32 training rows vs [\d.]+ on 32 holdout") as e:
        run_job(job, log=_quiet)
    msg = str(e.value)
    assert "data.prompt_template='Question: {prompt}\\nAnswer:'" in msg and "data.response_prefix=' '" in msg
    assert "audit.format_check: false" in msg and not (tmp_path / "f").exists()


def test_format_check_decision_by_hand():
    from dist_unlearn.job.format_check import judge_format

    assert judge_format(np.array([1.0, 1.0]), np.array([1.2, 1.2]))["passed"]  # 17% below
    assert judge_format(np.array([1.0, 3.0]), np.array([2.0, 2.05]))["passed"] is False  # 2% below, AUC 0.5
    # 6 of the 9 (train, holdout) pairs ordered, 3 tied: AUC 7.5 / 9
    assert judge_format(np.array([1.0, 1.9, 2.0]), np.array([2.0] * 3))["auc"] == pytest.approx(7.5 / 9)


def test_a_missing_subject_column_fails_before_the_model_loads(people, tmp_path, monkeypatch):
    import dist_unlearn.job.model as job_model

    def loaded(*a, **k):
        raise AssertionError("the model was loaded before the subject column was checked")

    monkeypatch.setattr(job_model, "load_job_model", loaded)
    job = _job(people, "original", tmp_path / "s", people["names"][:2])
    job["data"]["subject_column"] = "author"
    with pytest.raises(DataError, match=r"subject column 'author' \(from data.subject_column\) is not a col"):
        audit_model(job, log=_quiet)
    assert not (tmp_path / "s").exists()


def test_subject_column_missing_from_the_holdout_names_its_source(people, tmp_path):
    rows = [json.loads(x) for x in (people["folder"] / "holdout.jsonl").read_text().splitlines()]
    (tmp_path / "h.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "person"}) + "\n"
                                              for r in rows))  # fmt: skip
    job = _job(people, "original", tmp_path / "s", people["names"][:2], holdout=str(tmp_path / "h.jsonl"))
    with pytest.raises(DataError, match=r"'person' \(from forget.where\) is not a column of the holdout"):
        audit_model(job, log=_quiet)


def test_cli_audit_prints_the_subject_table(people, tmp_path):
    import yaml
    from click.testing import CliRunner

    from dist_unlearn.cli import _register, cli

    _register()
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_job(people, "original", tmp_path / "a", people["names"][:2])))
    r = CliRunner().invoke(cli, ["audit", "--config", str(job), "-q"])
    assert r.exit_code == 0, r.output
    assert "audit only" in r.output and "subjects (person)" in r.output
    for name in people["names"][:2]:
        assert name in r.output
    assert "recognisable" in r.output and "not_forgotten" in r.output and "attack AUCs" in r.output
    assert (tmp_path / "a" / "audit.json").is_file() and not (tmp_path / "a" / "model").exists()


def test_the_unlearned_model_is_the_same_with_and_without_probes(people, tmp_path):
    """The probes run on copies after the model is final: the files written are bit-identical whether
    they ran or not; the audit says what unlearning cost against retraining."""
    from dist_unlearn.job import run_job
    from dist_unlearn.output import sha256_file

    method = {"name": "cure_newton", "max_steps": 1, "krylov_max_iter": 3, "eig_iterations": 3}
    common = {"method": method, "training": {"epochs": EPOCHS}}
    on = run_job(
        _job(
            people,
            "original",
            tmp_path / "on",
            people["names"][:2],
            probes={"relearn_max_passes": 16},
            **common,
        ),
        log=_quiet,
    )
    off = run_job(_job(people, "original", tmp_path / "off", people["names"][:2], **common), log=_quiet)
    assert on.audit["probes"]["delivered_model_unchanged"] and not off.audit["probes"]["enabled"]
    files = sorted(p.name for p in (tmp_path / "on" / "model").iterdir() if p.suffix == ".safetensors")
    assert files and all(
        sha256_file(tmp_path / "on" / "model" / f) == sha256_file(tmp_path / "off" / "model" / f)
        for f in files
    )
    vs = on.audit["cost_against_retraining"]
    passes = on.audit["run"]["cost"]["example_passes"]
    assert vs["retraining_passes"] == EPOCHS * 48  # 48 retained rows
    assert vs["percent_of_retraining"] == pytest.approx(100 * passes / (EPOCHS * 48))
    assert set(on.audit["run"]["cost"]["by_role"]) <= {"retain", "forget", "calibration"}
    assert on.audit["audit"]["cost"]["by_role"].keys() == {"audit"}
