"""Where a result came from: versions, source commit, machine, time; forgotten ids and weight hashes.

Used by every record a command writes (the experiment report, the unlearning job's audit record), so an
auditor can tell what ran, on what, and what exactly was forgotten. Imports nothing heavy: versions come
from package metadata (``importlib.metadata``), torch is consulted only if the caller already imported it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

#: packages whose versions go into every record (distribution names)
PACKAGES = ("dist-unlearn", "torch", "transformers", "deepspeed", "ray", "datasets", "peft", "numpy")
#: weight files hashed by :func:`weight_file_hashes`
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def package_versions(packages: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None when not installed)."""
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _gpus() -> list[str]:
    """GPU names: from torch if it is already imported (no import cost here), else nvidia-smi if present."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - provenance must never fail
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        res = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in res.stdout.splitlines() if line.strip()] if res.returncode == 0 else []


def machine() -> dict[str, Any]:
    """This machine: OS, architecture, CPU count, memory, GPUs, hostname."""
    return {
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "gpus": _gpus(),
        "hostname": socket.gethostname(),
    }


def _git(root: Path, *args: str) -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    try:
        res = subprocess.run(
            [git, "-C", str(root), *args], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def source_commit() -> dict[str, Any]:
    """Git commit of the dist_unlearn source tree (``commit`` None when not a git checkout, e.g. a wheel).

    ``dirty`` is True when tracked files differ from that commit (the numbers may not be reproducible
    from the commit alone).
    """
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return {"commit": None, "dirty": None, "source": str(root)}
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "commit": commit,
        "dirty": None if status is None else bool(status),
        "source": str(root),
    }


def provenance(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record of what produced a result; never raises.

    Args:
        extra: more fields to record (e.g. ``{"workers": 2, "command": "dist-unlearn run ..."}``); they win
            over the defaults of the same name.

    Returns:
        ``{"dist_unlearn", "versions", "python", "platform", "hostname", "git_commit", "git_dirty",
        "created_utc", "argv", ...extra}``.
    """
    versions = package_versions()
    git = source_commit()
    info = machine()
    record: dict[str, Any] = {
        "dist_unlearn": versions.get("dist-unlearn"),
        "versions": versions,
        "python": platform.python_version(),
        "platform": info,
        "hostname": info["hostname"],
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "created_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "argv": list(sys.argv),
    }
    record.update(extra or {})
    return record


def _sort_key(x: Any) -> tuple[int, Any]:
    if isinstance(x, bool):
        return (1, str(x))
    if isinstance(x, int):
        return (0, x)
    return (1, str(x))


def write_ids_file(path: str | Path, ids: Iterable[Any]) -> dict[str, Any]:
    """Write the forgotten ids one per line (numbers ascending first, then others as text), atomically.

    The sha256 is of the file's bytes, so ``sha256sum forget_ids.txt`` checks it.

    Returns:
        ``{"path": str, "count": int, "sha256": str}``.
    """
    path = Path(path)
    items = sorted((x.item() if hasattr(x, "item") else x for x in ids), key=_sort_key)
    data = "".join(f"{x}\n" for x in items).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return {"path": str(path), "count": len(items), "sha256": hashlib.sha256(data).hexdigest()}


def weight_file_hashes(model_dir: str | Path) -> dict[str, str]:
    """sha256 of every weight file under ``model_dir`` (``*.safetensors``, ``*.bin``, ``*.pt``,
    ``*.pth``), keyed by path relative to ``model_dir``; empty when the folder does not exist."""
    from dist_unlearn.output import sha256_file

    root = Path(model_dir)
    if not root.is_dir():
        return {}
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in files}
