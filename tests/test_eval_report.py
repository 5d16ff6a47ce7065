"""results.json (atomic, schema) and the markdown/PNG report, including the CLI."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import pytest
from click.testing import CliRunner

from dist_unlearn.errors import DataError, OutputError
from dist_unlearn.eval import ResourceUsage, load_results, method_record, write_report, write_results
from dist_unlearn.eval import results as results_module

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class FakeStep:  # the fields of methods.StepRecord that the report reads
    step: int
    loss: float
    grad_norm: float
    step_norm: float
    M: float
    hvps: int
    accepted: bool


def sample_results():
    steps = [FakeStep(i, 1.0 / (i + 1), 10.0**-i, 0.5 * 10.0**-i, 1.0, 12, i != 1) for i in range(4)]
    pinv = [FakeStep(i, 1.0, 1.0, 10.0 ** (3 + i), 0.0, 30, True) for i in range(3)]
    return {
        "experiment": {"task": "digits_cnn", "forget": {"fraction": 0.1, "seed": 0}, "seed": 0},
        "methods": {
            "original": method_record(
                {"acc_retain": 0.99, "acc_forget": 0.99, "acc_test": 0.95, "tow": 0.93}
            ),
            "retrain": method_record(
                {"acc_retain": 0.99, "acc_forget": 0.94, "acc_test": 0.95, "tow": 1.0, "param_distance": 0.0},
                resources=ResourceUsage(wall_time_s=12.5, peak_rss_bytes=300 * 2**20),
            ),
            "cure_newton": method_record(
                {
                    "acc_retain": np.float32(0.985),
                    "acc_forget": np.float64(0.95),
                    "acc_test": 0.951,
                    "tow": 0.984,
                    "js_forget": 1.5e-4,
                    "param_distance": 0.7,
                    "mia_auc": float("nan"),
                },
                steps=steps,
                resources=ResourceUsage(wall_time_s=1.25, peak_rss_bytes=310 * 2**20),
                stats={"hvps": np.int64(48)},
            ),
            "pinv_newton": method_record({"acc_retain": 0.1, "tow": 0.05, "param_distance": 3e4}, steps=pinv),
        },
        "hessian_spectrum": [
            {
                "label": "retain Hessian",
                "grid": np.linspace(-1, 5, 50),
                "density": np.exp(-np.linspace(-1, 5, 50)),
            }
        ],
    }


def test_write_results_schema_and_conversion(tmp_path):
    path = write_results(sample_results(), tmp_path / "out")
    assert path == tmp_path / "out" / "results.json"
    raw = path.read_text()
    data = json.loads(raw)  # strict JSON: no NaN tokens
    assert "NaN" not in raw
    assert data["schema_version"] == 1 and data["created_utc"].endswith("Z")
    cure = data["methods"]["cure_newton"]
    assert cure["metrics"]["acc_retain"] == pytest.approx(0.985) and cure["metrics"]["mia_auc"] is None
    assert cure["steps"][1] == {
        "step": 1,
        "loss": 0.5,
        "grad_norm": 0.1,
        "step_norm": 0.05,
        "M": 1.0,
        "hvps": 12,
        "accepted": False,
    }
    assert cure["resources"]["wall_time_s"] == 1.25 and cure["stats"]["hvps"] == 48
    assert len(data["hessian_spectrum"][0]["grid"]) == 50
    assert load_results(tmp_path / "out") == data
    assert os.listdir(tmp_path / "out") == ["results.json"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_write_results_rejects_bad_structure(tmp_path):
    with pytest.raises(DataError, match="methods"):
        write_results({"experiment": {}}, tmp_path)
    with pytest.raises(DataError, match="unknown keys"):
        write_results({"methods": {"a": {"metrics": {}, "metricz": {}}}}, tmp_path)
    with pytest.raises(DataError, match="numbers"):
        write_results({"methods": {"a": {"metrics": {"x": "high"}}}}, tmp_path)
    assert not (tmp_path / "results.json").exists()


def _only_results(directory):
    return sorted(os.listdir(directory)) == ["results.json"]


def test_failed_write_leaves_old_file_and_no_temp_files(tmp_path, monkeypatch):
    write_results({"methods": {"old": {"metrics": {"tow": 0.5}}}}, tmp_path)
    before = (tmp_path / "results.json").read_bytes()

    # 1. crash in the middle of writing the bytes: half a file in the temp, then failure
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(results_module.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    with pytest.raises(OutputError, match="unchanged"):
        write_results(sample_results(), tmp_path)
    monkeypatch.setattr(results_module.os, "fdopen", real_fdopen)
    assert (tmp_path / "results.json").read_bytes() == before and _only_results(tmp_path)

    # 2. crash at the rename
    def no_replace(src, dst):
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(results_module.os, "replace", no_replace)
    with pytest.raises(OutputError):
        write_results(sample_results(), tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "results.json").read_bytes() == before and _only_results(tmp_path)

    # 3. a value that is not JSON: nothing is touched
    with pytest.raises(OutputError, match="object"):
        write_results({"methods": {"a": {"metrics": {"tow": 1.0}, "stats": {"x": object()}}}}, tmp_path)
    assert (tmp_path / "results.json").read_bytes() == before and _only_results(tmp_path)


def _check_png(path):
    from PIL import Image

    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 2000
    with Image.open(path) as img:
        assert img.size[0] > 200 and img.size[1] > 150
        # not a blank canvas: several distinct colours
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20)) > 5


def test_write_report_files_and_content(tmp_path):
    results_path = write_results(sample_results(), tmp_path / "run")
    report = write_report(results_path, tmp_path / "report")
    assert report == tmp_path / "report" / "report.md"
    for name in ("metrics.png", "update_norms.png", "hessian_spectrum.png"):
        _check_png(tmp_path / "report" / name)
    text = report.read_text()
    for needle in (
        "cure_newton",
        "pinv_newton",
        "retrain",
        "![metrics per method](metrics.png)",
        "(update_norms.png)",
        "(hessian_spectrum.png)",
        "0.984",
        "3e+04",
        "digits_cnn",
    ):
        assert needle in text, needle
    # summary table: one row per method, wall time and peak memory in MiB
    row = next(line for line in text.splitlines() if line.startswith("| cure_newton"))
    assert "1.25" in row and "310.0" in row
    # outer-step table: 4 steps, 3 accepted, 48 HVPs
    step_row = [line for line in text.splitlines() if line.startswith("| cure_newton")][-1]
    assert step_row.split("|")[2:5] == [" 4 ", " 3 ", " 48 "]
    assert sorted(os.listdir(tmp_path / "report")) == sorted(
        ["report.md", "metrics.png", "update_norms.png", "hessian_spectrum.png"]
    )


def test_report_without_steps_or_spectrum_with_rounds(tmp_path):
    rounds = [{"round": i, "methods": {"a": {"metrics": {"tow": t}}}} for i, t in enumerate((0.9, 0.8))]
    results = {"methods": {"a": {"metrics": {"forget_quality": 0.4, "model_utility": 0.6}}}, "rounds": rounds}
    write_report(results, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["metrics.png", "report.md"]
    text = (tmp_path / "report.md").read_text()
    assert "| forget_quality | 0.4 |" in text
    assert "## Sequential rounds (tow)" in text and "| a | 0.9 | 0.8 |" in text


def test_cli_report(tmp_path):
    from dist_unlearn.cli import cli
    from dist_unlearn.cli import report as _  # noqa: F401  (registers the command)

    write_results({"methods": {"cure_newton": {"metrics": {"tow": 0.98}}}}, tmp_path / "run")
    runner = CliRunner()
    res = runner.invoke(
        cli, ["report", "--results", str(tmp_path / "run" / "results.json"), "--out", str(tmp_path / "rep")]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "rep" / "report.md").stat().st_size > 0 and (tmp_path / "rep" / "metrics.png").exists()
    # a directory works too, output defaults next to the results
    res = runner.invoke(cli, ["report", "--results", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "report.md").exists()
    (tmp_path / "bad.json").write_text('{"methods": {}}')
    res = runner.invoke(
        cli, ["report", "--results", str(tmp_path / "bad.json"), "--out", str(tmp_path / "x")]
    )
    assert res.exit_code != 0 and "methods" in res.output
    res = runner.invoke(cli, ["report", "--result", "x"])
    assert res.exit_code != 0 and "--results" in res.output


def test_report_is_an_audit_record(tmp_path):
    """Verdicts, the values after the last update, cost vs retraining, definitions, provenance, hashes;
    the config in an appendix file, not in the body."""
    from dist_unlearn.cost import CostCounter
    from dist_unlearn.eval.verdict import decide, loss_evidence
    from dist_unlearn.provenance import provenance

    rng = np.random.default_rng(0)
    unseen = rng.exponential(1.0, 200)
    before = loss_evidence(rng.exponential(0.2, 50), unseen)  # memorised: clearly distinguishable
    after = loss_evidence(rng.exponential(1.0, 50), unseen)
    oracle = loss_evidence(rng.exponential(1.0, 50), unseen)
    retrain_cost, cure_cost = CostCounter(), CostCounter()
    retrain_cost.add("train_step", 1000)
    cure_cost.add("hvp_exact", 50)  # 150 passes = 15% of retraining
    steps = [
        {"step": 0, "loss": 0.1732, "grad_norm": 0.5, "step_norm": 1.0, "hvps": 10, "accepted": True},
    ]
    results = {
        "experiment": {
            "name": "audit",
            "task": "digits_cnn",
            "config": {"seed": 0, "methods": [{"name": "damped_newton"}]},
            "forgotten_ids": {"path": "forget_ids.txt", "count": 50, "sha256": "ab" * 32},
            "saved_models": {
                "damped_newton": {"path": "models/damped_newton", "sha256": {"model.safetensors": "cd" * 32}}
            },
        },
        "methods": {
            "original": {
                "metrics": {"tow": 0.9},
                "resources": {"wall_time_s": 10.0, "peak_rss_bytes": 200 * 2**20},
            },
            "retrain": {
                "metrics": {"tow": 1.0, "time_fraction_of_retrain": 1.0},
                "resources": {"wall_time_s": 9.0, "peak_rss_bytes": 210 * 2**20},
                "stats": {"cost": retrain_cost.as_dict()},
            },
            "damped_newton": {
                "metrics": {"tow": 0.95, "time_fraction_of_retrain": 0.2},
                "steps": steps,
                "resources": {"wall_time_s": 1.8, "peak_rss_bytes": 220 * 2**20},
                "stats": {
                    "method": "damped_newton",
                    "final_loss": 0.1868,
                    "final_grad_norm": 0.04,
                    "cost": cure_cost.as_dict(),
                },
            },
        },
        "verdicts": {
            "original": {
                "evidence": before,
                "vs_retrained": decide(before, reference=oracle),
                "vs_unseen": decide(before),
            },
            "damped_newton": {
                "evidence": after,
                "vs_retrained": decide(after, before=before, reference=oracle),
                "vs_unseen": decide(after, before=before),
            },
        },
        "provenance": provenance({"workers": 2, "command": "dist-unlearn run -c x.yaml"}),
    }
    write_report(results, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "```json" not in text and '"methods"' not in text  # no config dump in the body
    assert yaml_load(tmp_path / "config.yaml") == results["experiment"]["config"]
    assert "[config.yaml](config.yaml) (appendix)" in text
    # verdict rows: the original is not forgotten, the unlearned model is
    verdict_rows = [line for line in text.splitlines() if line.startswith("| original (before")]
    assert verdict_rows and "not forgotten" in verdict_rows[0]
    assert results["verdicts"]["damped_newton"]["vs_retrained"]["status"] == "forgotten"
    # the step table shows the loss after the update (stats), and that it got worse
    step_row = [line for line in text.splitlines() if line.startswith("| damped_newton")][-1]
    assert "0.1732" in step_row and "0.1868 (worse)" in step_row and "0.04" in step_row
    # cost: 150 passes = 15% of the 1000 of retraining; wall 20% of retraining
    verdict_row, summary, _steps = [line for line in text.splitlines() if line.startswith("| damped_newton")]
    assert "| forgotten |" in verdict_row
    cells = [c.strip() for c in summary.split("|")]
    assert "150" in cells and "15" in cells and "20" in cells
    # peak memory for the references too
    assert "200.0" in next(line for line in text.splitlines() if line.startswith("| original |"))
    assert "210.0" in next(line for line in text.splitlines() if line.startswith("| retrain |"))
    assert "Forgotten: 50 examples" in text and "ab" * 32 in text and "cd" * 32 in text
    assert "## Metric definitions" in text and "| tow | Tug-of-War" in text
    assert "## Provenance" in text and "| workers | 2 |" in text and "`dist-unlearn run -c x.yaml`" in text


def yaml_load(path):
    import yaml

    return yaml.safe_load(path.read_text())
