"""`dist-unlearn run` / `eval` end to end on a tiny digits config, config errors, and atomic outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from dist_unlearn.cli import _register, cli

_register()

TINY = {
    "name": "tiny",
    "seed": 0,
    "task": {"name": "digits_cnn", "params": {"channels": 2, "hidden": 8, "n_samples": 120}},
    "train": {"epochs": 3, "lr": 0.02, "batch_size": 32},
    "forget": {"fraction": 0.1, "seed": 0},
    "methods": [{"name": "cure_newton", "max_steps": 1}, {"name": "finetune", "epochs": 1, "lr": 0.001}],
    "eval": {"report": False},
    "progress": False,
}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _write(tmp_path: Path, cfg: dict, name: str = "cfg.yaml") -> Path:
    cfg = dict(cfg)
    cfg.setdefault("output_dir", str(tmp_path / "out"))
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _visible(out: Path) -> list[str]:
    """Entries of the output dir other than the model cache."""
    return sorted(p.name for p in out.iterdir() if p.name != "cache") if out.exists() else []


def test_run_and_eval_tiny_config_end_to_end(tmp_path):
    cfg = _write(tmp_path, TINY)
    res = _run("run", "--config", str(cfg), "--quiet")
    assert res.exit_code == 0, res.output
    assert "cure_newton" in res.output and "tow" in res.output  # the rich table
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    methods = results["methods"]
    assert set(methods) == {"original", "retrain", "cure_newton", "finetune"}
    assert methods["retrain"]["metrics"]["tow"] == pytest.approx(1.0)
    assert methods["cure_newton"]["steps"] and methods["cure_newton"]["stats"]["total_hvps"] > 0
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]

    # independent check of the recorded test accuracy: reload the saved model and count by hand
    from dist_unlearn.tasks import get_task
    from dist_unlearn.tasks.digits_cnn import digits_logits

    task = get_task("digits_cnn")(TINY["task"]["params"], seed=0)
    model = task.load(out / "models" / "cure_newton")
    test = task.data().test
    x = torch.tensor(np.asarray(test["pixels"], dtype=np.float32))
    with torch.no_grad():
        acc = (digits_logits(model, {"pixels": x}).argmax(1).numpy() == np.asarray(test["label"])).mean()
    assert methods["cure_newton"]["metrics"]["acc_test"] == pytest.approx(acc)

    # eval re-evaluates the saved models against the cached oracle: same numbers
    res = _run("eval", "--config", str(cfg), "--quiet")
    assert res.exit_code == 0, res.output
    again = json.loads((out / "eval.json").read_text())["methods"]
    for name in ("cure_newton", "finetune"):
        assert again[name]["metrics"]["tow"] == pytest.approx(methods[name]["metrics"]["tow"])


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"metods": []}, "Did you mean 'methods'?"),
        ({"forget": {"fracton": 0.1}}, "Did you mean 'fraction'?"),
        ({"train": {"epoch": 2}}, "Did you mean 'epochs'?"),
        ({"task": {"name": "digits_cnn", "params": {"chanels": 4}}}, "Did you mean 'channels'?"),
        ({"task": {"name": "digits_cn"}}, "Did you mean 'digits_cnn'?"),
        ({"methods": [{"name": "cure_newtn"}]}, "Did you mean 'cure_newton'?"),
        ({"methods": [{"name": "cure_newton", "max_stpes": 2}]}, "Did you mean 'max_steps'?"),
    ],
)
def test_misspelled_keys_are_rejected_with_a_suggestion(tmp_path, patch, expected):
    cfg = _write(tmp_path, {**TINY, **patch})
    res = _run("run", "--config", str(cfg), "--quiet")
    assert res.exit_code != 0
    assert expected in res.output
    assert _visible(tmp_path / "out") == []  # rejected before anything was trained or written


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"forget": {"fraction": 1.5}}, "forget.fraction"),
        ({"forget": {"fraction": 0.1, "label": 3}}, "exactly one of"),
        ({"zero_stage": 7}, "zero_stage"),
        ({"workers": 0}, "workers"),
        ({"methods": []}, "methods"),
        ({"methods": [{"name": "cure_newton", "M": -1.0}]}, "must be > 0"),
        ({"train": {"lr": -0.1}}, "train.lr"),
        ({"task": {"name": "digits_cnn", "params": {"activation": "sigmoidal"}}}, "activation"),
        ({"forget": {"label": 42}}, "not present"),
    ],
)
def test_bad_values_are_rejected(tmp_path, patch, expected):
    cfg = _write(tmp_path, {**TINY, **patch})
    res = _run("run", "--config", str(cfg), "--quiet")
    assert res.exit_code != 0
    assert expected in res.output, res.output
    assert "results.json" not in _visible(tmp_path / "out")


def test_missing_config_file_is_a_clear_error(tmp_path):
    res = _run("run", "--config", str(tmp_path / "nope.yaml"))
    assert res.exit_code != 0 and "does not exist" in res.output


def test_failure_mid_run_leaves_nothing_half_written(tmp_path, monkeypatch):
    """A method failing after others finished: no results/models/report, no staging folder; an earlier
    run's results in the same folder stay as they were."""
    out = tmp_path / "out"
    from dist_unlearn.output import OutputDir

    with OutputDir(out) as od:  # an earlier run's output (with its manifest)
        (od.stage / "results.json").write_text('{"previous": true}')
        od.commit()
    import dist_unlearn.api as api
    from dist_unlearn.errors import NumericalError

    real = api.unlearn

    def flaky(model, loss_fn, retain, forget, method, **opts):
        if method == "finetune":
            raise NumericalError("loss became nan (injected)")
        return real(model, loss_fn, retain, forget, method=method, **opts)

    monkeypatch.setattr(api, "unlearn", flaky)
    cfg = _write(tmp_path, {**TINY, "eval": {"report": True}})
    res = _run("run", "--config", str(cfg), "--quiet", "--overwrite")
    assert res.exit_code != 0 and "injected" in res.output
    assert _visible(out) == [".dist_unlearn_manifest.json", "results.json"]
    assert json.loads((out / "results.json").read_text()) == {"previous": True}
