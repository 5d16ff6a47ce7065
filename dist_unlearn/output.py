"""The one output layer of every command that writes (run, eval, report, bench, unlearn).

Rules, in the order they are checked:

1. A missing output directory is created; its nearest existing ancestor must be a writable folder.
2. An existing, non-empty directory is refused unless ``--overwrite`` is given (message names the flag).
   Only our own manifest, our model cache and leftovers of our staging folders do not count as content.
3. With ``--overwrite``, only entries an earlier dist_unlearn command wrote (listed in the manifest
   :data:`MANIFEST_NAME`) are replaced. A directory without our manifest is never written into, and an
   entry of ours that now holds files we did not write (or files changed since) is refused by name, so a
   model a user dropped into ``models/`` survives.
4. Everything is written into a hidden staging folder inside the destination (same filesystem) and moved
   into place by :meth:`OutputDir.commit`, entry by entry with :func:`os.replace`; on an exception the
   staging folder is removed and the destination is exactly as before.

Adding new entries (e.g. ``eval.json`` or ``report.md`` next to a ``results.json``) needs no ``--overwrite``
when the command says what it will write (``will_write``) and none of it exists yet: nothing can be lost.

Usage::

    out = check_output_dir(path, overwrite=args.overwrite)   # early, before expensive work
    ...
    with OutputDir(out, overwrite=args.overwrite, command="run") as od:
        (od.stage / "results.json").write_text(...)
        od.commit()
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from dist_unlearn.errors import OutputError

MANIFEST_NAME = ".dist_unlearn_manifest.json"
MANIFEST_FORMAT = "dist_unlearn.output_manifest"
STAGE_PREFIX = ".dist_unlearn-stage-"
#: entries written in place (not staged) and reused across runs; never replaced, never deleted
CACHE_KIND = "cache"


def sha256_file(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_manifest(path: str | Path) -> dict[str, Any] | None:
    """The manifest of output dir ``path``, or None when there is none.

    Raises:
        OutputError: the manifest exists but is not one of ours (unreadable, not JSON, wrong format).
    """
    file = Path(path) / MANIFEST_NAME
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise OutputError(f"cannot read the output manifest {str(file)!r}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise OutputError(f"{str(file)!r} is not a dist_unlearn output manifest; refusing to write there")
    data.setdefault("entries", {})
    return data


def _file_record(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(path)}


def _walk_files(entry: Path) -> list[Path]:
    if entry.is_symlink() or entry.is_file():
        return [entry]
    return sorted(p for p in entry.rglob("*") if p.is_file() or p.is_symlink())


def _entry_record(entry: Path, command: str) -> dict[str, Any]:
    files = {
        ("." if p == entry else p.relative_to(entry).as_posix()): _file_record(p) for p in _walk_files(entry)
    }
    return {
        "kind": "dir" if entry.is_dir() and not entry.is_symlink() else "file",
        "command": command,
        "written_utc": _now(),
        "files": files,
    }


def _foreign_files(root: Path, name: str, record: dict[str, Any]) -> list[str]:
    """Files under ``root/name`` that ``record`` does not list or that changed since it was written."""
    entry = root / name
    known = record.get("files") or {}
    bad = []
    for p in _walk_files(entry):
        rel = "." if p == entry else p.relative_to(entry).as_posix()
        shown = name if rel == "." else f"{name}/{rel}"
        rec = known.get(rel)
        if rec is None or p.is_symlink():
            bad.append(f"{shown} (not written by dist_unlearn)")
            continue
        st = p.stat()
        if st.st_size != rec.get("size") or (
            st.st_mtime_ns != rec.get("mtime_ns") and sha256_file(p) != rec.get("sha256")
        ):
            bad.append(f"{shown} (changed since dist_unlearn wrote it)")
    return bad


def _ignored(name: str, manifest: dict[str, Any] | None) -> bool:
    if name == MANIFEST_NAME or name.startswith(STAGE_PREFIX):
        return True
    rec = (manifest or {}).get("entries", {}).get(name)
    return bool(rec) and rec.get("kind") == CACHE_KIND


def _writable_ancestor(path: Path) -> None:
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"cannot create output directory {str(path)!r}: {str(probe)!r} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(
            f"cannot write to output directory {str(path)!r}: {str(probe)!r} is not writable; "
            "choose another directory with --out"
        )


def check_output_dir(
    path: str | Path, *, overwrite: bool = False, will_write: Iterable[str] | None = None
) -> Path:
    """Check, before any expensive work, that a command may write into ``path``. Changes nothing.

    Args:
        path: the output directory (need not exist).
        overwrite: the user passed ``--overwrite``: entries an earlier dist_unlearn command wrote may be
            replaced (never anything else).
        will_write: the top-level names the command will write, when it knows them (report, eval). Then
            any directory may receive these names without ``overwrite`` as long as none of them exists;
            an existing one is replaced only with ``overwrite`` and only if an earlier command of ours
            wrote it.

    Returns:
        The resolved path.

    Raises:
        OutputError: naming the directory and what to do (``--overwrite``, or another ``--out``).
    """
    out = Path(path).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise OutputError(f"output directory {str(out)!r} exists and is not a folder; choose another --out")
    _writable_ancestor(out)
    if not out.exists():
        return out
    manifest = read_manifest(out)
    content = sorted(p.name for p in out.iterdir() if not _ignored(p.name, manifest))
    if not content:
        return out
    if will_write is not None:  # adding names that do not exist yet can lose nothing
        clash = sorted(n for n in set(will_write) if (out / n).exists() or (out / n).is_symlink())
        if not clash:
            return out
        content = clash
    shown = ", ".join(content[:5]) + (f" and {len(content) - 5} more" if len(content) > 5 else "")
    if manifest is None:
        raise OutputError(
            f"output directory {str(out)!r} is not empty ({shown}) and was not written by dist_unlearn "
            f"(no {MANIFEST_NAME}); refusing to write there, even with --overwrite, so that none of these "
            "files can be lost. Choose an empty or new directory with --out."
        )
    entries = manifest["entries"]
    if not overwrite:
        raise OutputError(
            f"output directory {str(out)!r} already holds {shown}; pass --overwrite to replace what an "
            "earlier dist_unlearn run wrote there (other files are kept), or choose another --out."
        )
    problems: list[str] = []
    for name in content if will_write is not None else sorted(entries):
        rec = entries.get(name)
        if not (out / name).exists() and not (out / name).is_symlink():
            continue
        if rec is None:
            problems.append(f"{name} (not written by dist_unlearn)")
        elif rec.get("kind") != CACHE_KIND:
            problems += _foreign_files(out, name, rec)
    if problems:
        raise OutputError(
            f"--overwrite would replace files in {str(out)!r} that dist_unlearn did not write: "
            + "; ".join(problems[:10])
            + ". Move them elsewhere or choose another --out."
        )
    return out


class OutputDir:
    """Stage a command's outputs and move them into ``path`` only on :meth:`commit` (see module doc).

    Attributes:
        path: the resolved destination directory.
        stage: the hidden staging folder (inside ``path``): write everything here.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        overwrite: bool = False,
        command: str = "run",
        will_write: Iterable[str] | None = None,
    ) -> None:
        self.path = Path(path).expanduser().resolve()
        self.overwrite, self.command = overwrite, command
        self.will_write = None if will_write is None else list(will_write)
        self.stage = self.path / f"{STAGE_PREFIX}unopened"
        self._created: list[Path] = []
        self._claimed: list[str] = []
        self._committed = False

    # ----- context manager ---------------------------------------------------------------------------
    def __enter__(self) -> OutputDir:
        check_output_dir(self.path, overwrite=self.overwrite, will_write=self.will_write)
        probe = self.path
        missing = []
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._created = list(reversed(missing))
            self.stage = Path(tempfile.mkdtemp(dir=self.path, prefix=STAGE_PREFIX))
        except OSError as exc:
            raise OutputError(f"cannot create output directory {str(self.path)!r}: {exc}") from exc
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)
        if self._claimed and not self._committed:
            self._write_manifest({}, ok=False)  # keep the cache usable by the next try
        if not self._committed:
            for folder in reversed(self._created):  # folders this command created and left empty
                try:
                    folder.rmdir()
                except OSError:
                    break

    # ----- in-place entries (the model cache) --------------------------------------------------------
    def claim(self, name: str) -> Path:
        """Reserve the top-level entry ``name`` for files written in place and reused across runs (the
        model cache). It is recorded in the manifest even if the command fails, never replaced, never
        deleted, and does not make the directory count as non-empty.

        Raises:
            OutputError: ``name`` exists and an earlier dist_unlearn run did not create it as a cache.
        """
        target = self.path / name
        manifest = read_manifest(self.path) or {"entries": {}}
        rec = manifest["entries"].get(name)
        if (target.exists() or target.is_symlink()) and (rec is None or rec.get("kind") != CACHE_KIND):
            raise OutputError(
                f"{str(target)!r} exists and was not created by dist_unlearn as its cache; refusing to "
                "write into it. Move it away or choose another --out."
            )
        if name not in self._claimed:
            self._claimed.append(name)
        return target

    # ----- commit ------------------------------------------------------------------------------------
    def commit(self) -> list[str]:
        """Move every staged top-level entry into place and write the manifest.

        An existing entry is replaced only when the previous manifest lists it and ``overwrite`` is set;
        all entries are checked before anything moves. Returns the names written, sorted.

        Raises:
            OutputError: an entry would replace something not ours (or ours without ``overwrite``); the
                destination is then unchanged.
        """
        if self._committed:
            raise OutputError(f"outputs of {str(self.path)!r} were already committed")
        manifest = read_manifest(self.path) or {"entries": {}}
        entries = manifest["entries"]
        staged = sorted(p for p in self.stage.iterdir())
        for entry in staged:
            if entry.name == MANIFEST_NAME or entry.name.startswith(STAGE_PREFIX):
                raise OutputError(f"{entry.name!r} is a reserved name in an output directory")
            dest = self.path / entry.name
            if not (dest.exists() or dest.is_symlink()):
                continue
            rec = entries.get(entry.name)
            if rec is None or rec.get("kind") == CACHE_KIND:
                raise OutputError(
                    f"{str(dest)!r} was not written by dist_unlearn (or is its cache); refusing to replace it"
                )
            if not self.overwrite:
                raise OutputError(f"{str(dest)!r} exists; pass --overwrite to replace it")
            foreign = _foreign_files(self.path, entry.name, rec)
            if foreign:
                raise OutputError(
                    f"refusing to replace {str(dest)!r}: it holds files dist_unlearn did not write: "
                    + "; ".join(foreign[:10])
                )
        records = {e.name: _entry_record(e, self.command) for e in staged}
        trash = self.stage / (STAGE_PREFIX + "replaced")
        trash.mkdir()
        moved: list[list[Any]] = []  # [dest, the entry it replaced (in trash) or None, placed?]
        try:
            for entry in staged:
                dest = self.path / entry.name
                step: list[Any] = [dest, None, False]
                moved.append(step)
                if dest.exists() or dest.is_symlink():
                    step[1] = trash / entry.name
                    os.replace(dest, step[1])
                os.replace(entry, dest)
                step[2] = True
            for name, rec in records.items():  # mtimes as they are in place
                for rel, frec in rec["files"].items():
                    p = self.path / name if rel == "." else self.path / name / rel
                    frec["mtime_ns"] = p.stat().st_mtime_ns
            self._write_manifest(records, ok=True)
        except OSError as exc:
            for dest, old, placed in reversed(moved):  # put back what was there
                if placed and dest.is_dir() and not dest.is_symlink():
                    shutil.rmtree(dest, ignore_errors=True)
                elif placed:
                    dest.unlink(missing_ok=True)
                if old is not None:
                    os.replace(old, dest)
            raise OutputError(
                f"moving outputs into {str(self.path)!r} failed: {exc}; nothing changed"
            ) from exc
        self._committed = True
        return sorted(records)

    def _write_manifest(self, records: dict[str, dict[str, Any]], *, ok: bool) -> None:
        manifest = read_manifest(self.path) or {"format": MANIFEST_FORMAT, "version": 1, "entries": {}}
        entries = manifest["entries"]
        entries.update(records)
        for name in self._claimed:
            if name not in entries:
                entries[name] = {"kind": CACHE_KIND, "command": self.command, "written_utc": _now()}
        history = manifest.setdefault("history", [])
        history.append(
            {
                "command": self.command,
                "time_utc": _now(),
                "entries": sorted(records),
                "ok": ok,
            }
        )
        manifest["history"] = history[-50:]
        manifest["updated_utc"] = _now()
        tmp = self.path / f"{MANIFEST_NAME}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.replace(tmp, self.path / MANIFEST_NAME)
