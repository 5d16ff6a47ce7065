"""Checks run before any expensive work: devices, worker counts, and the files a config points to.

Each check raises :class:`~dist_unlearn.errors.ConfigError` naming the value, where it came from and what
is allowed, so a run never trains two models and starts Ray only to find a missing file.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from dist_unlearn.errors import ConfigError

log = logging.getLogger(__name__)

_DEVICE = re.compile(r"^(cpu|cuda|mps|meta)(:(\d+))?$")


def check_device(device: Any, *, where: str = "device") -> None:
    """``device`` must exist on this machine: "cpu", "cuda", "cuda:N" (N < the GPUs visible) or "mps".

    Raises:
        ConfigError: unknown device string, or a device this torch build / machine does not have.
    """
    if device is None:
        return
    import torch

    text = str(device)
    m = _DEVICE.match(text)
    if m is None:
        raise ConfigError(
            f"{where}={text!r} is not a device; allowed: 'cpu', 'cuda', 'cuda:N', 'mps' (or None: where "
            "the model is)"
        )
    kind, index = m.group(1), m.group(3)
    if kind == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only torch build" if torch.version.cuda is None else "no GPU visible"
            raise ConfigError(
                f"{where}={text!r} but CUDA is not available here ({build}, torch {torch.__version__}); "
                "use device='cpu' or None"
            )
        count = torch.cuda.device_count()
        if index is not None and int(index) >= count:
            raise ConfigError(
                f"{where}={text!r} but only {count} GPU(s) are visible (cuda:0..cuda:{count - 1})"
            )
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"{where}={text!r} but MPS is not available on this machine; use 'cpu'")


def available_slots(use_gpu: bool) -> tuple[int, str]:
    """(how many workers fit, what was counted): Ray's resources when this process already joined a Ray
    cluster, else the GPUs torch sees or the CPUs this process may use."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        res = ray.cluster_resources()
        key = "GPU" if use_gpu else "CPU"
        return int(res.get(key, 0)), f"{key}s in the Ray cluster"
    if use_gpu:
        import torch

        return torch.cuda.device_count(), "GPUs visible to torch"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cpus, "CPU cores usable by this process"


def check_workers(
    workers: int | None, *, use_gpu: bool | None = None, oversubscribe: bool = False, where: str = "workers"
) -> str | None:
    """``workers`` must fit the machine (one CPU core, or one GPU, per worker) unless ``oversubscribe``.

    Returns:
        None when it fits; the warning (also logged) when oversubscribing on purpose.

    A remote cluster (``RAY_ADDRESS`` set, not yet joined) is not checked here: its size is only known
    once connected.

    Raises:
        ConfigError: more workers than slots, naming both numbers and the opt-in.
    """
    if workers is None:
        return None
    if os.environ.get("RAY_ADDRESS") and "ray" not in sys.modules:
        return None
    if use_gpu is None:
        import torch

        use_gpu = torch.cuda.is_available()
    slots, what = available_slots(use_gpu)
    if workers <= slots:
        return None
    host = "the Ray cluster" if what.endswith(" in the Ray cluster") else "this machine"
    msg = f"{where}={workers} but {host} has {slots} {what.removesuffix(' in the Ray cluster')}"
    if not oversubscribe:
        raise ConfigError(
            f"{msg}; use at most {slots} workers, or set oversubscribe: true (CLI --oversubscribe) to run "
            "more workers than cores on purpose (slower: they share the cores)"
        )
    warning = f"{msg}: oversubscribing on purpose (oversubscribe=true); the workers share them"
    log.warning(warning)
    return warning


def check_deepspeed_config(value: Any, zero_stage: int, *, where: str = "deepspeed_config") -> None:
    """A deepspeed_config file must exist and parse, and agree with ``zero_stage``.

    Raises:
        ConfigError: missing / unreadable / non-JSON file, or a contradicting ZeRO stage.
    """
    if value is None:
        return
    if isinstance(value, str | Path):
        path = Path(value)
        if not path.is_file():
            raise ConfigError(
                f"{where}={str(value)!r}: no such file (give a DeepSpeed JSON file or a mapping)"
            )
    from dist_unlearn.distributed.dsconfig import make_ds_config

    try:
        make_ds_config(zero_stage, value)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def check_writable_dir(value: Any, *, where: str) -> None:
    """A folder that will be created or written to (e.g. ``checkpoint_dir``) must be a folder or creatable.

    Raises:
        ConfigError: the path is a file, or its nearest existing parent is not a writable folder.
    """
    if value is None:
        return
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{where}={str(value)!r} exists and is not a folder")
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{where}={str(value)!r} cannot be created: {str(probe)!r} is not a writable folder"
        )


def check_input_file(value: Any, *, where: str) -> None:
    """A file the run reads (e.g. ``forget.ids_file``) must exist and be readable.

    Raises:
        ConfigError: missing, a folder, or unreadable.
    """
    if value is None:
        return
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"{where}={str(value)!r}: no such file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{where}={str(value)!r} is not readable")


def check_experiment(cfg: Any) -> list[str]:
    """Every check above on an :class:`~dist_unlearn.config.ExperimentConfig` and its method options.

    Returns:
        Warnings to show the user (oversubscription on purpose).
    """
    from dist_unlearn.config import CURVATURE_METHODS

    warnings: list[str] = []
    check_input_file(cfg.forget.ids_file, where="forget.ids_file")
    check_deepspeed_config(cfg.deepspeed_config, cfg.zero_stage)
    warnings.append(check_workers(cfg.workers, oversubscribe=cfg.oversubscribe))
    for i, m in enumerate(cfg.methods):
        opts = cfg.method_options(m)
        at = f"methods[{i}] ({m.display})"
        check_device(opts.get("device"), where=f"{at}.device")
        check_writable_dir(opts.get("checkpoint_dir"), where=f"{at}.checkpoint_dir")
        if m.name in CURVATURE_METHODS and opts.get("workers") is not None:
            if opts.get("workers") != cfg.workers:
                warnings.append(
                    check_workers(opts["workers"], oversubscribe=cfg.oversubscribe, where=f"{at}.workers")
                )
            if opts.get("deepspeed_config") is not cfg.deepspeed_config:
                check_deepspeed_config(
                    opts.get("deepspeed_config"),
                    int(opts.get("zero_stage") or 0),
                    where=f"{at}.deepspeed_config",
                )
    return [w for w in warnings if w]
