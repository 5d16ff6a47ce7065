"""Third-party chatter, silenced at its source unless asked for.

A job's own progress lines and its verdict table are what a user reads; the libraries underneath print
progress bars (``Loading weights``, ``Writing model shards``, ``Generating train split``), advisory warnings
(``loss_type=None ...``) and Ray's notice about the embedded cluster's token authentication. Each library has
a switch for that, read from the environment when it is imported (so Ray worker processes, which import
them afresh, obey the same switches when the variables travel in their ``runtime_env``) or set through its
API when it is already imported.

:func:`quiet_libraries` turns the chatter off (``verbose=False``, the commands' default) or back on
(``-v``); a variable the user set in the environment always wins. :func:`worker_env` is what the Ray
workers get.
"""

from __future__ import annotations

import logging
import os
import sys

LIBRARY_ENV: dict[str, str] = {
    "TRANSFORMERS_VERBOSITY": "error",  # transformers' logger: advisory warnings and infos
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # huggingface_hub's bars, and transformers' (it follows the hub)
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # datasets: "Generating train split", "Map"
    "DATASETS_VERBOSITY": "error",
}
"""The switches, with their quiet values."""

QUIET_LOGGERS: dict[str, int] = {
    "ray._private.authentication": logging.ERROR,
    "ray._private.worker": logging.WARNING,
    "DeepSpeed": logging.ERROR,
    "deepspeed": logging.ERROR,
}
"""Loggers raised to a level: Ray's token-authentication notice (the embedded cluster's dashboard is off) and
its "Started a local Ray instance" info, DeepSpeed's start-up infos and its "Setting accelerator to CPU"
warning. A level alone does not last: DeepSpeed sets its logger's level when it is imported, after this
module ran, so each logger also gets a :class:`_Below` filter (filters survive ``setLevel``)."""


class _Below(logging.Filter):
    """Drops records below a level, whatever level the logger's owner sets later."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


_set_by_us: dict[str, str] = {}
_levels: dict[str, int] = {}
_filters: dict[str, _Below] = {}


def quiet_libraries(verbose: bool = False) -> None:
    """Silence (``verbose=False``) or restore (``verbose=True``) the libraries' chatter in this process.

    Environment variables the user set are left as they are; those this function set are removed again by
    ``verbose=True``.
    """
    if verbose:
        for key in list(_set_by_us):
            if os.environ.get(key) == _set_by_us.pop(key):
                del os.environ[key]
        for name, level in list(_levels.items()):
            logging.getLogger(name).setLevel(level)
            del _levels[name]
        for name, below in list(_filters.items()):
            logging.getLogger(name).removeFilter(below)
            del _filters[name]
        _apply_to_imported(quiet=False)
        return
    for key, value in LIBRARY_ENV.items():
        if key not in os.environ:
            os.environ[key] = value
            _set_by_us[key] = value
    for name, level in QUIET_LOGGERS.items():
        logger = logging.getLogger(name)
        _levels.setdefault(name, logger.level)
        logger.setLevel(level)
        if name not in _filters:
            _filters[name] = _Below(level)
            logger.addFilter(_filters[name])
    _apply_to_imported(quiet=True)


def _apply_to_imported(*, quiet: bool) -> None:
    """The same switches for libraries imported before the environment was set (restoring leaves a
    library's progress bars alone while its environment switch is set: the environment has priority)."""
    env = os.environ
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        if quiet:
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
        elif "TRANSFORMERS_VERBOSITY" not in env:
            hf_logging.set_verbosity_warning()
            if "HF_HUB_DISABLE_PROGRESS_BARS" not in env:
                hf_logging.enable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        if quiet:
            datasets.utils.logging.set_verbosity_error()
            datasets.disable_progress_bars()
        else:
            if "DATASETS_VERBOSITY" not in env:
                datasets.utils.logging.set_verbosity_warning()
            if "HF_DATASETS_DISABLE_PROGRESS_BARS" not in env:
                datasets.enable_progress_bars()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub import utils as hub_utils

        if quiet:
            hub_utils.disable_progress_bars()
        elif "HF_HUB_DISABLE_PROGRESS_BARS" not in env:
            hub_utils.enable_progress_bars()


def worker_env() -> dict[str, str]:
    """The switches in force in this process, for a Ray worker's ``runtime_env``."""
    return {k: os.environ[k] for k in LIBRARY_ENV if k in os.environ}
