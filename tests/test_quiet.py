"""Third-party chatter is silenced at its source by default and comes back with -v."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import yaml

from dist_unlearn import quiet

CHATTER = (
    "Loading weights",
    "Writing model shards",
    "Generating train split",
    "loss_type=None",
    "Token auth",
)


def test_quiet_sets_the_switches_and_verbose_undoes_only_its_own(monkeypatch):
    for key in quiet.LIBRARY_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")  # the user's choice wins
    try:
        quiet.quiet_libraries(verbose=False)
        assert os.environ["TRANSFORMERS_VERBOSITY"] == "info"
        assert os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1"
        assert logging.getLogger("ray._private.authentication").level == logging.ERROR
        assert quiet.worker_env()["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    finally:
        quiet.quiet_libraries(verbose=True)
    assert "HF_DATASETS_DISABLE_PROGRESS_BARS" not in os.environ
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "info"
    assert logging.getLogger("ray._private.authentication").level != logging.ERROR


@pytest.mark.parametrize("verbose", [False, True])
def test_deepspeed_accelerator_warning_stays_quiet_after_deepspeed_sets_its_own_level(verbose):
    """DeepSpeed sets its logger's level when it is imported (after quiet_libraries ran) and warns
    "Setting accelerator to CPU" when DS_ACCELERATOR is unset: silent by default, back with verbose."""
    code = (
        "from dist_unlearn.quiet import quiet_libraries\n"
        "quiet_libraries()\n"
        f"quiet_libraries(verbose={verbose})\n"
        "import deepspeed\n"
        "from deepspeed.accelerator import get_accelerator\n"
        "get_accelerator()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert ("Setting accelerator" in out.stdout + out.stderr) is verbose


@pytest.fixture(scope="module")
def job_yaml(tmp_path_factory):
    from dist_unlearn.demo.people import build_demo

    folder = tmp_path_factory.mktemp("quiet")
    paths = build_demo(
        folder, n_people=4, n_holdout=2, n_forget=1, per_person=2, epochs=2, n_embd=16, n_layer=1
    )
    job = {
        "model": str(paths["model"]),
        "data": {
            "path": str(paths["train"]),
            "prompt_column": "question",
            "response_column": "answer",
            "prompt_template": "Question: {prompt}\nAnswer:",
        },
        "holdout": str(paths["holdout"]),
        "forget": {"ids_file": str(paths["forget_ids"])},
        "method": {"name": "cure_newton", "max_steps": 1, "krylov_max_iter": 2, "eig_iterations": 2},
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _run(job: str, out: str, cache: str, *flags: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in quiet.LIBRARY_ENV}
    env["HF_DATASETS_CACHE"] = cache  # a fresh cache: datasets prepares the files again (its progress bar)
    cmd = [sys.executable, "-m", "dist_unlearn", *flags, "unlearn", "--config", job, "--output", out]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def test_the_job_prints_its_own_lines_and_no_library_chatter(job_yaml, tmp_path):
    text = _run(str(job_yaml), str(tmp_path / "a"), str(tmp_path / "c1"))
    assert "unlearning with cure_newton" in text and "after" in text
    assert [c for c in CHATTER if c in text] == []
    loud = _run(str(job_yaml), str(tmp_path / "b"), str(tmp_path / "c2"), "-v")
    assert "Generating train split" in loud  # -v brings the libraries' output back
