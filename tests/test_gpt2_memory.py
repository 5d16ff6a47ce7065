"""benchmarks/gpt2_memory.py on a tiny GPT-2: one ZeRO-3 cure_newton step on 1 and 2 workers, memory read."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from dist_unlearn.errors import ConfigError

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpt2_memory.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpt2_memory", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_refuses_non_empty_out(tmp_path):
    (tmp_path / "x").write_text("keep")
    with pytest.raises(ConfigError, match="not empty"):
        _load().main(["--small", "--out", str(tmp_path)])
    assert (tmp_path / "x").read_text() == "keep"


@pytest.mark.slow
def test_small_gpt2_step_and_memory(tmp_path):
    out = tmp_path / "res"
    assert _load().main(["--small", "--workers", "1,2", "--krylov-max-iter", "3", "--out", str(out)]) == 0
    res = json.loads((out / "result.json").read_text())
    runs = {r["workers"]: r for r in res["runs"]}
    assert set(runs) == {1, 2}
    n_params = runs[1]["num_params"]
    for n, r in runs.items():
        assert r["steps_completed"] == 1
        assert len(r["per_worker"]) == n
        for w in r["per_worker"]:
            for key in ("setup_peak_mb", "base_rss_mb", "step_peak_mb", "lifetime_peak_rss_mb"):
                assert w[key] is not None and math.isfinite(w[key]) and w[key] > 0, (n, key, w[key])
            assert w["step_peak_mb"] <= w["lifetime_peak_rss_mb"] + 1.0
            assert w["hvps"] >= 1
            # the shards partition the model: rank shard = ceil(numel / N) per parameter, summed
            assert n_params / n * 4 / 2**20 <= w["params_shard_mb"] <= (n_params / n + 200 * n) * 4 / 2**20
        assert math.isfinite(r["ratio_step_peak_mb"])
    assert runs[1]["ratio_step_peak_mb"] == 1.0
