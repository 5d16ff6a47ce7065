"""benchmarks/cases/run_cases.py: the ``--method NAME=JSON`` argument (a method dict run under a name)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cases" / "run_cases.py"


def _load():
    spec = importlib.util.spec_from_file_location("run_cases", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_named_method_parses_a_method_dict():
    name, method = _load().named_method('rho0={"name": "match_unseen", "sam_rho": 0}')
    assert name == "rho0"
    assert method == {"name": "match_unseen", "sam_rho": 0}


@pytest.mark.parametrize("text", ["rho0", '={"name": "npo"}', 'x={"lr": 1}', "x=[1]"])
def test_named_method_refuses_what_is_not_a_named_method(text):
    with pytest.raises(argparse.ArgumentTypeError, match="--method"):
        _load().named_method(text)


def test_named_method_refuses_bad_json():
    with pytest.raises(argparse.ArgumentTypeError, match="not JSON"):
        _load().named_method("x={name: npo}")
