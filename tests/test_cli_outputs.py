"""Every writing command keeps the user's files: run, eval, report, bench; and bad input fails early."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from dist_unlearn.cli import _register, cli
from dist_unlearn.output import MANIFEST_NAME

_register()

TINY = {
    "name": "tiny",
    "seed": 0,
    "task": {"name": "digits_cnn", "params": {"channels": 2, "hidden": 8, "n_samples": 120}},
    "train": {"epochs": 2, "lr": 0.02, "batch_size": 32},
    "forget": {"fraction": 0.1, "seed": 0},
    "methods": [{"name": "cure_newton", "max_steps": 1}],
    "progress": False,
}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(tmp_path: Path, **patch) -> Path:
    cfg = {**TINY, "output_dir": str(tmp_path / "out"), **patch}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _plant(folder: Path) -> dict[str, bytes]:
    """A user's own files, including one inside models/ (the data-loss case)."""
    files = {"notes.txt": b"my notes", "models/mine/pytorch_model.bin": b"my model weights"}
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return files


def _assert_kept(folder: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        assert (folder / rel).read_bytes() == data, rel


def test_run_refuses_a_folder_with_user_files_even_with_overwrite(tmp_path):
    out = tmp_path / "out"
    files = _plant(out)
    for extra in ([], ["--overwrite"]):
        res = _run("run", "-c", str(_cfg(tmp_path)), "-q", *extra)
        assert res.exit_code != 0
        assert "OutputError" in res.output and "not written by dist_unlearn" in res.output
    _assert_kept(out, files)
    assert sorted(p.name for p in out.iterdir()) == ["models", "notes.txt"]  # nothing trained, no cache


def test_run_twice_needs_overwrite_and_keeps_user_files_beside_ours(tmp_path):
    cfg = _cfg(tmp_path)
    out = tmp_path / "out"
    assert _run("run", "-c", str(cfg), "-q").exit_code == 0
    first = (out / "models" / "cure_newton" / "model.safetensors").read_bytes()
    (out / "notes.txt").write_text("my notes")
    res = _run("run", "-c", str(cfg), "-q")
    assert res.exit_code != 0 and "--overwrite" in res.output
    assert _run("run", "-c", str(cfg), "-q", "--overwrite").exit_code == 0
    assert (out / "notes.txt").read_text() == "my notes"
    assert (out / "models" / "cure_newton" / "model.safetensors").read_bytes() == first  # same seed
    # a model the user drops into our models/ folder blocks --overwrite instead of being deleted
    (out / "models" / "mine").mkdir()
    (out / "models" / "mine" / "w.bin").write_bytes(b"mine")
    res = _run("run", "-c", str(cfg), "-q", "--overwrite")
    assert res.exit_code != 0 and "models/mine/w.bin" in res.output
    assert (out / "models" / "mine" / "w.bin").read_bytes() == b"mine"

    # results.json of the run carries the audit fields
    results = json.loads((out / "results.json").read_text())
    ids = results["experiment"]["forgotten_ids"]
    import hashlib

    assert ids["sha256"] == hashlib.sha256((out / "forget_ids.txt").read_bytes()).hexdigest()
    assert (
        ids["count"]
        == len((out / "forget_ids.txt").read_text().split())
        == results["experiment"]["n_forget_total"]
    )
    weights = results["experiment"]["saved_models"]["cure_newton"]["sha256"]
    assert weights["model.safetensors"] == hashlib.sha256(first).hexdigest()
    from importlib import metadata

    assert results["provenance"]["versions"]["torch"] == metadata.version("torch")
    v = results["verdicts"]["cure_newton"]
    assert v["vs_retrained"]["status"] in ("forgotten", "partially_forgotten", "not_forgotten")
    assert v["evidence"]["n_forget"] == ids["count"]
    for ref in ("original", "retrain"):  # peak memory measured for the references too
        assert results["methods"][ref]["resources"]["peak_rss_bytes"] > 0
    man = json.loads((out / MANIFEST_NAME).read_text())
    assert {"results.json", "models", "report.md", "forget_ids.txt", "cache"} <= set(man["entries"])
    assert "notes.txt" not in man["entries"]


def test_eval_adds_eval_json_then_needs_overwrite(tmp_path):
    cfg = _cfg(tmp_path)
    out = tmp_path / "out"
    assert _run("run", "-c", str(cfg), "-q").exit_code == 0
    (out / "notes.txt").write_text("mine")
    assert _run("eval", "-c", str(cfg), "-q").exit_code == 0
    assert (out / "eval.json").exists()
    res = _run("eval", "-c", str(cfg), "-q")
    assert res.exit_code != 0 and "--overwrite" in res.output
    assert _run("eval", "-c", str(cfg), "-q", "--overwrite").exit_code == 0
    assert (out / "notes.txt").read_text() == "mine"
    # a user's eval.json in another folder is never replaced
    other = tmp_path / "other"
    other.mkdir()
    (other / "eval.json").write_text("user eval")
    res = _run("eval", "-c", str(cfg), "-q", "--out", str(other), "--overwrite")
    assert res.exit_code != 0 and "not written by dist_unlearn" in res.output
    assert (other / "eval.json").read_text() == "user eval"


def test_report_adds_files_keeps_user_files_and_refuses_to_replace_theirs(tmp_path):
    from dist_unlearn.eval import write_results

    run = tmp_path / "run"
    write_results({"methods": {"cure_newton": {"metrics": {"tow": 0.98}}}}, run)
    files = _plant(run)
    assert _run("report", "--results", str(run)).exit_code == 0  # new names only: nothing can be lost
    _assert_kept(run, files)
    res = _run("report", "--results", str(run))
    assert res.exit_code != 0 and "--overwrite" in res.output
    assert _run("report", "--results", str(run), "--overwrite").exit_code == 0
    _assert_kept(run, files)
    user = tmp_path / "user"
    user.mkdir()
    (user / "report.md").write_text("my report")
    res = _run("report", "--results", str(run), "--out", str(user), "--overwrite")
    assert res.exit_code != 0 and "not written by dist_unlearn" in res.output
    assert (user / "report.md").read_text() == "my report"


def _fake_bench_file(tmp_path: Path) -> Path:
    from test_bench import _fake_bench

    src = tmp_path / "in.json"
    src.write_text(json.dumps(_fake_bench()))
    return src


def test_bench_output_rule(tmp_path):
    src = _fake_bench_file(tmp_path)
    out = tmp_path / "bench"
    files = _plant(out)
    assert _run("bench", "--from-json", str(src), "--out", str(out)).exit_code == 0  # adds its four files
    _assert_kept(out, files)
    res = _run("bench", "--from-json", str(src), "--out", str(out))
    assert res.exit_code != 0 and "--overwrite" in res.output
    res = _run("bench", "--from-json", str(src), "--out", str(out), "--overwrite")
    assert res.exit_code == 0, res.output
    assert "markdown: " + str(out.resolve() / "bench.md") in res.output
    _assert_kept(out, files)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json {", "not valid JSON"),
        ("[1, 2]", "JSON list, not a bench.json"),
        ('{"methods": {}}', "missing ['model', 'num_params', 'machine', 'runs']"),
        ('{"model": "mlp", "num_params": 1, "machine": "m", "runs": []}', "non-empty list"),
        ('{"model": "mlp", "num_params": 1, "machine": "m", "runs": [{"ok": true}]}', "runs[0] lacks"),
    ],
)
def test_bench_from_json_bad_files_are_clean_errors(tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    res = CliRunner().invoke(cli, ["bench", "--from-json", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and res.exception is None or isinstance(res.exception, SystemExit)
    assert "DataError" in res.output and message in res.output, res.output
    assert "Traceback" not in res.output


def test_bench_from_json_with_fields_of_another_version(tmp_path):
    from test_bench import _fake_bench

    bench = _fake_bench()
    del bench["runs"][0]["grad_s"]
    bad = tmp_path / "old.json"
    bad.write_text(json.dumps(bench))
    res = CliRunner().invoke(cli, ["bench", "--from-json", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "does not have the fields" in res.output and "grad_s" in res.output
    assert not (tmp_path / "o").exists()


# ----- checked before anything is trained ----------------------------------------------------------------
def _fails_early(tmp_path: Path, message: str, *extra: str, **patch) -> None:
    res = _run("run", "-c", str(_cfg(tmp_path, **patch)), "-q", *extra)
    assert res.exit_code != 0
    assert "ConfigError" in res.output and message in res.output, res.output
    assert not (tmp_path / "out").exists()  # nothing trained, cached or written


def test_missing_deepspeed_config_file_fails_before_training(tmp_path):
    _fails_early(tmp_path, "no such file", workers=1, deepspeed_config=str(tmp_path / "ds.json"))


def test_deepspeed_config_not_json_fails_before_training(tmp_path):
    (tmp_path / "ds.json").write_text("{nope")
    _fails_early(tmp_path, "not a readable JSON file", workers=1, deepspeed_config=str(tmp_path / "ds.json"))


def test_checkpoint_dir_that_is_a_file_fails_before_training(tmp_path):
    (tmp_path / "ckpt").write_text("x")
    methods = [
        {"name": "cure_newton", "max_steps": 1, "workers": 1, "checkpoint_dir": str(tmp_path / "ckpt")}
    ]
    _fails_early(tmp_path, "checkpoint_dir", methods=methods)


def test_missing_ids_file_fails_before_training(tmp_path):
    _fails_early(tmp_path, "forget.ids_file", forget={"ids_file": str(tmp_path / "ids.txt")})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_on_a_cpu_machine_is_a_config_error(tmp_path):
    methods = [{"name": "cure_newton", "max_steps": 1, "device": "cuda"}]
    _fails_early(tmp_path, "CUDA is not available", methods=methods)


def test_bad_device_string_is_a_config_error(tmp_path):
    _fails_early(tmp_path, "not a device", methods=[{"name": "cure_newton", "device": "gpu0"}])


def test_more_workers_than_cores_needs_oversubscribe(tmp_path, monkeypatch):
    from dist_unlearn import preflight

    monkeypatch.setattr(preflight, "available_slots", lambda use_gpu: (2, "CPU cores usable by this process"))
    _fails_early(tmp_path, "workers=3 but this machine has 2 CPU cores", "--workers", "3")
    # with the opt-in the check passes (a warning); stop right after it, before Ray starts
    monkeypatch.setattr("dist_unlearn.tasks.base.Task.data", _boom)
    args = ["run", "-c", str(_cfg(tmp_path)), "--workers", "3", "--oversubscribe"]
    res = CliRunner().invoke(cli, args)
    assert "stop here" in str(res.exception)
    assert (
        "WARNING workers=3 but this machine has 2" in res.output
        and "oversubscribing on purpose" in res.output
    )


def _boom(self):
    raise RuntimeError("stop here")


def test_output_dir_that_is_a_file_fails_before_training(tmp_path):
    (tmp_path / "out").write_text("x")
    res = _run("run", "-c", str(_cfg(tmp_path)), "-q")
    assert res.exit_code != 0 and "OutputError" in res.output and "not a folder" in res.output


def test_eval_after_a_no_cache_run_records_the_cache_it_creates(tmp_path):
    cfg = _cfg(tmp_path)
    out = tmp_path / "out"
    assert _run("run", "-c", str(cfg), "-q", "--no-cache").exit_code == 0
    assert not (out / "cache").exists()
    assert _run("eval", "-c", str(cfg), "-q").exit_code == 0  # retrains the oracle into out/cache
    man = json.loads((out / MANIFEST_NAME).read_text())
    assert man["entries"]["cache"]["kind"] == "cache"
    assert _run("run", "-c", str(cfg), "-q", "--overwrite").exit_code == 0  # the cache is ours: reused
