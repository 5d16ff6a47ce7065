"""Provenance: versions, commit, machine; forgotten-id files and weight hashes checked against hashlib."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from dist_unlearn.provenance import provenance, source_commit, weight_file_hashes, write_ids_file

ROOT = Path(__file__).resolve().parent.parent


def test_provenance_fields_and_versions_match_metadata():
    rec = provenance({"workers": 3})
    assert rec["workers"] == 3
    assert rec["versions"]["torch"] == metadata.version("torch")
    assert rec["versions"]["transformers"] == metadata.version("transformers")
    assert rec["python"] == ".".join(map(str, sys.version_info[:3]))
    assert rec["platform"]["cpu_count"] >= 1
    assert rec["platform"]["memory_bytes"] is None or rec["platform"]["memory_bytes"] > 2**20
    assert rec["created_utc"].endswith("Z")
    json.dumps(rec)  # JSON-serialisable as it is


def test_git_commit_is_the_checkout_head_when_known():
    got = source_commit()["commit"]
    if (ROOT / ".git").exists():
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert got == head
    else:
        assert got is None


def test_import_is_light():
    code = "import sys, dist_unlearn.provenance, dist_unlearn.output; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_write_ids_file_sorted_counted_and_hashed(tmp_path):
    ids = [np.int64(12), 3, 7, np.int64(100)]
    rec = write_ids_file(tmp_path / "sub" / "forget_ids.txt", ids)
    text = (tmp_path / "sub" / "forget_ids.txt").read_bytes()
    assert text == b"3\n7\n12\n100\n"
    assert rec == {
        "path": str(tmp_path / "sub" / "forget_ids.txt"),
        "count": 4,
        "sha256": hashlib.sha256(b"3\n7\n12\n100\n").hexdigest(),
    }


def test_write_ids_file_text_ids(tmp_path):
    rec = write_ids_file(tmp_path / "ids.txt", ["b", "a"])
    assert (tmp_path / "ids.txt").read_text() == "a\nb\n"
    assert rec["count"] == 2


def test_weight_file_hashes_only_weight_files(tmp_path):
    (tmp_path / "m" / "sub").mkdir(parents=True)
    (tmp_path / "m" / "model.safetensors").write_bytes(b"w1")
    (tmp_path / "m" / "sub" / "adapter.bin").write_bytes(b"w2")
    (tmp_path / "m" / "config.json").write_text("{}")
    got = weight_file_hashes(tmp_path / "m")
    assert got == {
        "model.safetensors": hashlib.sha256(b"w1").hexdigest(),
        "sub/adapter.bin": hashlib.sha256(b"w2").hexdigest(),
    }
    assert weight_file_hashes(tmp_path / "missing") == {}
