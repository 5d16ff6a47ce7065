"""What a command prints: progress that suits a log file, and ``-q`` that silences the libraries too.

- On a terminal, tqdm bars as usual.
- When stderr is not a terminal (a log file, ``ray job submit``, CI), a ``PlainProgress`` tqdm replaces
  the bar: one plain line per update (every update when there are at most 25, e.g. outer steps, else at most
  one line per 10 s and the last one), no ``\\r``.
- ``-q``: no progress and no log lines of ours, and Ray's / DeepSpeed's warnings and info lines filtered.

:func:`output_mode` is a context manager so that everything is restored when the command returns (tests run
many commands in one process).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: library loggers silenced by ``-q`` (records below ERROR are dropped)
QUIET_LOGGERS = ("ray", "DeepSpeed", "deepspeed", "torch.distributed", "datasets", "transformers")
QUIET_ENV = {
    "RAY_LOGGER_LEVEL": "error",
    "PYTHONWARNINGS": "ignore",
}  # not RAY_BACKEND_LOG_LEVEL: it logs itself


@functools.cache
def _plain_class() -> type:
    """:class:`PlainProgress`, built on first use (tqdm is imported only when progress is shown)."""
    from tqdm.std import tqdm as std_tqdm

    class PlainProgress(std_tqdm):
        """tqdm that prints one plain line per update instead of redrawing a bar (for log files).

        Every update is printed when the bar has at most :attr:`few` steps (outer steps, methods), else at
        most one line per :attr:`min_interval` seconds plus the last one. It is a real tqdm subclass, so
        libraries that subclass ``tqdm.auto.tqdm`` while it is installed keep working.
        """

        few = 25
        min_interval = 10.0

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._plain_t = -math.inf
            self._plain_n: float | None = None
            self._plain_post: str | None = None
            kwargs.update(mininterval=0, miniters=1, dynamic_ncols=False)
            super().__init__(*args, **kwargs)

        def plain_line(self) -> str:
            """e.g. ``cure_newton: 3/20 step, 41.2 s (loss=0.310)``."""
            d = self.format_dict
            total = "" if d.get("total") is None else f"/{d['total']:g}"
            text = f"{d.get('prefix') or ''}: {d['n']:g}{total} {d.get('unit') or 'it'}, {d['elapsed']:.1f} s"
            return text + (f" ({d['postfix']})" if d.get("postfix") else "")

        def display(self, msg: str | None = None, pos: int | None = None) -> bool:
            if msg == "":  # tqdm asks to erase the bar: nothing was drawn
                return False
            now = time.monotonic()
            moved = self._plain_n != self.n
            changed = moved or self._plain_post != self.postfix
            total = self.total
            every = moved and total is not None and (total <= self.few or self.n >= total)
            # a long step: a new line when the postfix (e.g. the Lanczos count) changed after min_interval
            if msg == "final" or every or (changed and now - self._plain_t >= self.min_interval):
                self.fp.write(self.plain_line() + "\n")
                self.fp.flush()
                self._plain_t, self._plain_n, self._plain_post = now, self.n, self.postfix
            return True

        def clear(self, nolock: bool = False) -> None:  # nothing to erase: lines are never redrawn
            return None

        def close(self) -> None:
            if getattr(self, "disable", True):
                return
            if self.n and self._plain_n != self.n:
                self.display(msg="final")
            self.disable = True
            self._decr_instances(self)

    return PlainProgress


class _BelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def _swap_tqdm(new: Any) -> list[tuple[Any, str, Any]]:
    """Point ``tqdm.auto.tqdm`` and every dist_unlearn module's ``tqdm`` name at ``new``; returns the undo
    list."""
    import tqdm.auto

    old = tqdm.auto.tqdm
    undo = [(tqdm.auto, "tqdm", old)]
    tqdm.auto.tqdm = new
    for name, mod in list(sys.modules.items()):
        if name.startswith("dist_unlearn") and getattr(mod, "tqdm", None) is old:
            undo.append((mod, "tqdm", old))
            mod.tqdm = new
    return undo


@contextmanager
def output_mode(*, quiet: bool = False, plain: bool | None = None) -> Iterator[None]:
    """Set up what the command prints (module doc); everything is restored on exit.

    Args:
        quiet: the command's ``-q``.
        plain: plain progress lines instead of bars (default: when stderr is not a terminal).
    """
    if plain is None:
        plain = not sys.stderr.isatty()
    undo: list[tuple[Any, str, Any]] = []
    filt = _BelowError()
    saved_env = {k: os.environ.get(k) for k in QUIET_ENV}
    try:
        if plain:
            undo = _swap_tqdm(_plain_class())
        with warnings.catch_warnings():
            if quiet:
                os.environ.update(QUIET_ENV)
                for name in QUIET_LOGGERS:
                    logging.getLogger(name).addFilter(filt)
                    for handler in logging.getLogger(name).handlers:
                        handler.addFilter(filt)
                warnings.filterwarnings("ignore", module=r"(ray|deepspeed|torch\.distributed)(\.|$)")
            yield
    finally:
        for mod, attr, old in reversed(undo):
            setattr(mod, attr, old)
        if undo:  # modules first imported inside the block took the plain class from tqdm.auto
            original, plain_cls = undo[0][2], _plain_class()
            for name, mod in list(sys.modules.items()):
                if name.startswith("dist_unlearn") and getattr(mod, "tqdm", None) is plain_cls:
                    mod.tqdm = original
        if quiet:
            for name in QUIET_LOGGERS:
                logging.getLogger(name).removeFilter(filt)
                for handler in logging.getLogger(name).handlers:
                    handler.removeFilter(filt)
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
