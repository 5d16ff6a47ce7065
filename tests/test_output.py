"""The output layer: refuse non-empty dirs, replace only our own entries, never lose a user's file."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from dist_unlearn.errors import OutputError
from dist_unlearn.output import MANIFEST_NAME, OutputDir, check_output_dir, sha256_file


def _write_run(out, *, overwrite=False, text="v1", command="run"):
    with OutputDir(out, overwrite=overwrite, command=command) as od:
        (od.stage / "results.json").write_text(json.dumps({"v": text}))
        (od.stage / "models" / "a").mkdir(parents=True)
        (od.stage / "models" / "a" / "model.safetensors").write_bytes(text.encode())
        return od.commit()


def _snapshot(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }


def test_sha256_file_matches_hashlib(tmp_path):
    f = tmp_path / "x.bin"
    data = os.urandom(3 * (1 << 20) + 17)  # crosses the 1 MiB chunk boundary
    f.write_bytes(data)
    assert sha256_file(f) == hashlib.sha256(data).hexdigest()


def test_fresh_dir_is_created_and_manifest_lists_entries_with_hashes(tmp_path):
    out = tmp_path / "a" / "b"
    assert check_output_dir(out) == out.resolve()
    assert not out.exists()  # the check has no side effects
    names = _write_run(out)
    assert names == ["models", "results.json"]
    man = json.loads((out / MANIFEST_NAME).read_text())
    files = man["entries"]["models"]["files"]
    assert files["a/model.safetensors"]["sha256"] == hashlib.sha256(b"v1").hexdigest()
    assert man["entries"]["results.json"]["files"]["."]["sha256"] == sha256_file(out / "results.json")
    assert man["entries"]["results.json"]["command"] == "run"
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [MANIFEST_NAME]


def test_non_empty_dir_is_refused_without_overwrite_naming_the_flag(tmp_path):
    _write_run(tmp_path / "o")
    with pytest.raises(OutputError, match="--overwrite") as info:
        check_output_dir(tmp_path / "o")
    assert str((tmp_path / "o").resolve()) in str(info.value)
    with pytest.raises(OutputError, match="--overwrite"):
        _write_run(tmp_path / "o", text="v2")
    assert json.loads((tmp_path / "o" / "results.json").read_text()) == {"v": "v1"}


def test_user_dir_without_manifest_is_refused_even_with_overwrite(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "results.json").write_text("my own results")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="not written by dist_unlearn"):
            check_output_dir(user, overwrite=overwrite)
        with pytest.raises(OutputError):
            _write_run(user, overwrite=overwrite)
    assert (user / "results.json").read_text() == "my own results"
    assert sorted(p.name for p in user.iterdir()) == ["results.json"]


def test_overwrite_replaces_ours_and_keeps_user_files_beside_them(tmp_path):
    out = tmp_path / "o"
    _write_run(out)
    (out / "notes.txt").write_text("user notes")
    _write_run(out, overwrite=True, text="v2")
    assert json.loads((out / "results.json").read_text()) == {"v": "v2"}
    assert (out / "models" / "a" / "model.safetensors").read_bytes() == b"v2"
    assert (out / "notes.txt").read_text() == "user notes"
    man = json.loads((out / MANIFEST_NAME).read_text())
    assert "notes.txt" not in man["entries"]
    assert [h["command"] for h in man["history"]] == ["run", "run"]


def test_overwrite_refuses_when_a_user_put_a_model_inside_our_models_folder(tmp_path):
    """The data-loss case: a user's model inside models/ must survive --overwrite."""
    out = tmp_path / "o"
    _write_run(out)
    mine = out / "models" / "my_model"
    mine.mkdir()
    (mine / "pytorch_model.bin").write_bytes(b"precious")
    before = _snapshot(out)
    with pytest.raises(OutputError, match="my_model/pytorch_model.bin"):
        check_output_dir(out, overwrite=True)
    with pytest.raises(OutputError, match="my_model"):
        _write_run(out, overwrite=True, text="v2")
    assert _snapshot(out) == before


def test_overwrite_refuses_a_file_of_ours_the_user_edited(tmp_path):
    out = tmp_path / "o"
    _write_run(out)
    (out / "results.json").write_text('{"edited": "by hand, longer than before"}')
    with pytest.raises(OutputError, match="changed since"):
        check_output_dir(out, overwrite=True)
    assert "by hand" in (out / "results.json").read_text()


def test_commit_refuses_to_replace_a_user_file_not_in_the_manifest(tmp_path):
    out = tmp_path / "o"
    with OutputDir(out, command="eval", will_write=["eval.json"]) as od:
        (od.stage / "eval.json").write_text("{}")
        od.commit()
    (out / "report.md").write_text("my report")  # a name a later command wants to write
    with pytest.raises(OutputError, match="not written by dist_unlearn"):
        with OutputDir(out, overwrite=True, command="report") as od:
            (od.stage / "report.md").write_text("generated")
            od.commit()
    assert (out / "report.md").read_text() == "my report"
    assert not [p for p in out.iterdir() if p.name.startswith(".dist_unlearn-stage-")]


def test_failure_leaves_destination_untouched_and_removes_staging(tmp_path):
    out = tmp_path / "o"
    _write_run(out)
    (out / "keep.txt").write_text("k")
    before = _snapshot(out)
    with pytest.raises(RuntimeError), OutputDir(out, overwrite=True) as od:
        (od.stage / "results.json").write_text("half")
        raise RuntimeError("boom")
    assert _snapshot(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".dist_unlearn-stage-")]


def test_failure_in_a_new_dir_leaves_no_dir(tmp_path):
    out = tmp_path / "new" / "deeper"
    with pytest.raises(RuntimeError), OutputDir(out):
        raise RuntimeError("boom")
    assert not (tmp_path / "new").exists()


def test_will_write_adds_new_names_to_our_dir_without_overwrite(tmp_path):
    out = tmp_path / "o"
    _write_run(out)
    assert check_output_dir(out, will_write=["eval.json"]) == out.resolve()
    with OutputDir(out, command="eval", will_write=["eval.json"]) as od:
        (od.stage / "eval.json").write_text("{}")
        assert od.commit() == ["eval.json"]
    with pytest.raises(OutputError, match="eval.json; pass --overwrite"):
        check_output_dir(out, will_write=["eval.json"])
    check_output_dir(out, will_write=["eval.json"], overwrite=True)
    man = json.loads((out / MANIFEST_NAME).read_text())
    assert set(man["entries"]) == {"results.json", "models", "eval.json"}


def test_cache_claim_survives_failure_and_does_not_count_as_content(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(RuntimeError), OutputDir(out) as od:
        cache = od.claim("cache")
        cache.mkdir()
        (cache / "original.pt").write_bytes(b"trained")
        raise RuntimeError("later step failed")
    assert (out / "cache" / "original.pt").read_bytes() == b"trained"
    check_output_dir(out)  # only our cache is there: a retry needs no --overwrite
    names = _write_run(out)
    assert "cache" not in names
    assert (out / "cache" / "original.pt").read_bytes() == b"trained"


def test_claim_refuses_a_user_folder_of_that_name(tmp_path):
    out = tmp_path / "o"
    _write_run(out)
    (out / "cache").mkdir()
    (out / "cache" / "user.pt").write_bytes(b"u")
    with OutputDir(out, overwrite=True) as od, pytest.raises(OutputError, match="cache"):
        od.claim("cache")
    assert (out / "cache" / "user.pt").read_bytes() == b"u"


def test_output_path_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        check_output_dir(f)
    with pytest.raises(OutputError, match="not a folder"):
        check_output_dir(f / "sub")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_parent_is_refused_before_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_output_dir(ro / "out")
    finally:
        ro.chmod(0o700)


def test_foreign_manifest_is_refused(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / MANIFEST_NAME).write_text('{"format": "something else"}')
    (out / "x").write_text("x")
    with pytest.raises(OutputError, match="not a dist_unlearn output manifest"):
        check_output_dir(out, overwrite=True)
