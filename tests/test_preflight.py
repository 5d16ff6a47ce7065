"""Checks before expensive work: each bad value is a ConfigError naming it and what is allowed."""

from __future__ import annotations

import pytest
import torch

from dist_unlearn import preflight
from dist_unlearn.errors import ConfigError


@pytest.mark.parametrize("device", [None, "cpu", "meta"])
def test_devices_that_exist_pass(device):
    preflight.check_device(device)


def test_cuda_without_cuda_names_the_build(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device='cuda' but CUDA is not available") as info:
        preflight.check_device("cuda")
    assert "use device='cpu'" in str(info.value)


def test_cuda_index_beyond_the_visible_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    preflight.check_device("cuda:1")
    with pytest.raises(ConfigError, match=r"only 2 GPU\(s\) are visible \(cuda:0..cuda:1\)"):
        preflight.check_device("cuda:2", where="methods[0].device")


def test_unknown_device_string_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match="'tpu' is not a device; allowed: 'cpu', 'cuda'"):
        preflight.check_device("tpu")


def test_workers_against_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert preflight.check_workers(1, use_gpu=True) is None
    with pytest.raises(ConfigError, match="workers=2 but this machine has 1 GPUs visible to torch"):
        preflight.check_workers(2, use_gpu=True)
    warning = preflight.check_workers(2, use_gpu=True, oversubscribe=True)
    assert warning is not None and "oversubscribing on purpose" in warning


def test_workers_against_usable_cpus(monkeypatch):
    import os

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cpus = len(os.sched_getaffinity(0))
    assert preflight.check_workers(cpus, use_gpu=False) is None
    with pytest.raises(ConfigError, match=f"workers={cpus + 1} but this machine has {cpus} CPU cores"):
        preflight.check_workers(cpus + 1, use_gpu=False)


def test_deepspeed_config_stage_contradiction(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text('{"zero_optimization": {"stage": 2}}')
    preflight.check_deepspeed_config(str(path), 2)
    with pytest.raises(ConfigError, match="deepspeed_config"):
        preflight.check_deepspeed_config(str(path), 3)


def test_writable_dir_and_input_file(tmp_path):
    preflight.check_writable_dir(tmp_path / "a" / "b", where="checkpoint_dir")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="checkpoint_dir=.* exists and is not a folder"):
        preflight.check_writable_dir(tmp_path / "f", where="checkpoint_dir")
    with pytest.raises(ConfigError, match="cannot be created"):
        preflight.check_writable_dir(tmp_path / "f" / "sub", where="checkpoint_dir")
    preflight.check_input_file(tmp_path / "f", where="forget.ids_file")
    with pytest.raises(ConfigError, match="forget.ids_file=.*: no such file"):
        preflight.check_input_file(tmp_path / "missing", where="forget.ids_file")
    with pytest.raises(ConfigError, match="no such file"):
        preflight.check_input_file(tmp_path, where="forget.ids_file")  # a folder is not a file
