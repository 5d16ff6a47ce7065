"""`ray job submit -- python -m dist_unlearn unlearn --config job.yaml --workers 2 --zero-stage 3` on a
loopback head the test starts and stops by its PID (the head fixture of test_launch.py)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch
import yaml
from test_job import save_tiny_classifier
from test_launch import BIN, REPO, ray_head  # noqa: F401  (the fixture is used by name)


@pytest.mark.slow
def test_ray_job_submit_runs_the_unlearn_job_on_two_zero3_workers(ray_head, tmp_path):  # noqa: F811
    from transformers import AutoModelForCausalLM

    from dist_unlearn.demo.people import build_demo

    address, env = ray_head
    job_dir = tmp_path / "job"  # what --working-dir uploads: the job, the model and the data
    paths = build_demo(
        job_dir, n_people=6, n_holdout=3, n_forget=1, per_person=3, epochs=10, n_embd=32, n_layer=1
    )
    out = tmp_path / "unlearned"
    job = {
        "model": "model",  # relative to the working dir, as a user's repository would have it
        "data": {"path": "train.jsonl", "prompt_column": "question", "response_column": "answer"},
        "holdout": "holdout.jsonl",
        "forget": {"ids_file": "forget_ids.txt"},
        "method": {"name": "cure_newton", "max_steps": 1, "krylov_max_iter": 4, "eig_iterations": 3},
        "output_dir": str(out),
    }
    (job_dir / "job.yaml").write_text(yaml.safe_dump(job))
    cmd = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        str(job_dir),
        "--",
        "python",
        "-m",
        "dist_unlearn",
        "unlearn",
        "--config",
        "job.yaml",
        "--workers",
        "2",
        "--zero-stage",
        "3",
    ]
    env = {**env, "PATH": f"{BIN}:{env['PATH']}"}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-5000:]
    assert "succeeded" in log and "after" in log and "2 workers, ZeRO-3" in log
    audit = json.loads((out / "audit.json").read_text())
    assert audit["run"]["workers"] == 2 and audit["run"]["zero_stage"] == 3
    assert audit["request"]["data"]["rows"] == 18
    AutoModelForCausalLM.from_pretrained(str(out / "model"))
    assert paths["model"].is_dir()
    shutil.rmtree(job_dir, ignore_errors=True)


@pytest.mark.slow
def test_ray_job_submit_with_more_workers_than_the_cluster_fails_early_and_writes_nothing(
    ray_head,  # noqa: F811
    tmp_path,
):
    """The loopback head has 2 CPUs: --workers 3 for a method that runs on the workers (CureNewton; a
    first-order method runs in the job's process and says so) is refused by the job (joined to the cluster)
    before the model is loaded, naming the cluster's size, and no output folder appears."""
    from dist_unlearn.demo.people import build_demo

    address, env = ray_head
    job_dir = tmp_path / "job"
    build_demo(job_dir, n_people=4, n_holdout=2, n_forget=1, per_person=2, epochs=1, n_embd=16, n_layer=1)
    out = tmp_path / "unlearned"
    job = {
        "model": "model",
        "data": {"path": "train.jsonl", "prompt_column": "question", "response_column": "answer"},
        "holdout": "holdout.jsonl",
        "forget": {"ids_file": "forget_ids.txt"},
        "method": {"name": "cure_newton"},
        "output_dir": str(out),
    }
    (job_dir / "job.yaml").write_text(yaml.safe_dump(job))
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(job_dir), "--"]
    cmd += ["python", "-m", "dist_unlearn", "unlearn", "--config", "job.yaml", "--workers", "3"]
    env = {**env, "PATH": f"{BIN}:{env['PATH']}"}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = r.stdout + r.stderr
    assert r.returncode != 0, log[-5000:]
    assert "ConfigError" in log and "workers=3 but the Ray cluster has 2 CPUs" in log, log[-5000:]
    assert "loading causal_lm model" not in log  # refused before the model was loaded
    assert not out.exists()


@pytest.mark.slow
def test_ray_job_submit_unlearns_a_saved_classifier_on_two_zero3_workers(ray_head, tmp_path):  # noqa: F811
    """A saved sequence classifier (GPT-2-shaped, with its tokenizer) through `ray job submit`: the output
    loads with AutoModelForSequenceClassification + AutoTokenizer and the audit holds the accuracies."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    from dist_unlearn.demo.people import build_demo

    address, env = ray_head
    job_dir = tmp_path / "job"
    lm = build_demo(
        tmp_path / "lm", n_people=4, n_holdout=2, n_forget=1, per_person=2, epochs=1, n_embd=16, n_layer=1
    )
    save_tiny_classifier(lm["model"], job_dir / "clf")  # with a tokenizer trained on the demo's text
    rows = [
        {"id": i, "text": f"{'good' if i % 2 else 'bad'} answer {i}", "label": "pos" if i % 2 else "neg"}
        for i in range(20)
    ]
    (job_dir / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:14]))
    (job_dir / "h.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[14:]))
    out = tmp_path / "unlearned"
    job = {
        "model": "clf",
        "data": {"path": "t.jsonl", "text_column": "text", "label_column": "label", "max_length": 16},
        "holdout": "h.jsonl",
        "forget": {"ids": [0, 1, 2]},
        "method": {"name": "cure_newton", "max_steps": 1, "krylov_max_iter": 4, "eig_iterations": 3},
        "output_dir": str(out),
        "audit": {"format_check": False},  # the fixture classifier is untrained: it fits no row better
    }
    (job_dir / "job.yaml").write_text(yaml.safe_dump(job))
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(job_dir), "--"]
    cmd += ["python", "-m", "dist_unlearn", "unlearn", "--config", "job.yaml", "--workers", "2"]
    cmd += ["--zero-stage", "3"]
    env = {**env, "PATH": f"{BIN}:{env['PATH']}"}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-5000:]
    assert "loading classification model" in log and "2 workers, ZeRO-3" in log
    audit = json.loads((out / "audit.json").read_text())
    assert audit["run"]["workers"] == 2 and audit["run"]["zero_stage"] == 3
    assert audit["model"]["input"]["kind"] == "classification"
    for when in ("before", "after"):
        for key in ("forget_accuracy", "retain_accuracy", "holdout_accuracy"):
            assert 0.0 <= audit["evidence"][when][key] <= 1.0, (when, key)
    model = AutoModelForSequenceClassification.from_pretrained(str(out / "model"))
    AutoTokenizer.from_pretrained(str(out / "model"))
    assert model.config.id2label == {0: "neg", 1: "pos"}
    orig = AutoModelForSequenceClassification.from_pretrained(str(job_dir / "clf"))
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), orig.parameters(), strict=True))
    assert (out / "model" / "README.md").is_file()
    shutil.rmtree(job_dir, ignore_errors=True)
