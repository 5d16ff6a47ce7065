"""Exceptions users catch.

Every message names the bad value, where it came from and what is allowed, so a user can fix the input
without reading the source. All classes derive from :class:`DistUnlearnError`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DistUnlearnError(Exception):
    """Base class of every error raised on purpose by dist_unlearn."""


class ConfigError(DistUnlearnError, ValueError):
    """A configuration value or option is missing, misspelled or out of range."""


class DataError(DistUnlearnError, ValueError):
    """The data or the forget specification is inconsistent (unknown ids, empty sets, ...)."""


class ModelError(DistUnlearnError, ValueError):
    """The model cannot be used as given (tokenizer mismatch, no trainable parameters, ...)."""


class NumericalError(DistUnlearnError, ArithmeticError):
    """A loss, gradient, Hessian-vector product or solver quantity became NaN/inf or broke down."""


class DistributedError(DistUnlearnError, RuntimeError):
    """A Ray worker died, a rendezvous failed, or restarts were exhausted."""


class OutputError(DistUnlearnError, OSError):
    """An output could not be written (it is then left untouched: outputs are written atomically)."""


def suggest(name: str, allowed: Iterable[str]) -> str:
    """Return ' Did you mean 'x'?' for the closest allowed name, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(allowed), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def reject_unknown(kind: str, given: Iterable[str], allowed: Iterable[str]) -> None:
    """Raise ConfigError naming each unknown key in ``given`` with the closest allowed key.

    Args:
        kind: what the keys are, e.g. "option" or "config key in 'method'".
        given: the keys the user passed.
        allowed: the keys that are accepted.
    """
    allowed = sorted(allowed)
    unknown = [k for k in given if k not in allowed]
    if unknown:
        parts = [f"unknown {kind} {k!r}.{suggest(k, allowed)}" for k in unknown]
        raise ConfigError(" ".join(parts) + f" Allowed: {', '.join(allowed)}.")
