"""What to forget: a validated description, resolved against a dataset by :func:`split_forget`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dist_unlearn.errors import DataError, reject_unknown

_KINDS = ("ids", "label", "fraction", "ids_file")


@dataclass(frozen=True)
class ForgetSpec:
    """Exactly one of ``ids``, ``label``, ``fraction`` or ``ids_file``.

    Attributes:
        ids: explicit example ids (values of the dataset's id column, or row positions when it has none).
        label: forget every example whose label column equals this value (class-level unlearning).
        fraction: forget a uniformly random fraction in (0, 1) of the examples, drawn with ``seed``.
        ids_file: a text file with one id per line (``#`` comments allowed) or a JSON list of ids.
        seed: seed of the random draw for ``fraction``.
    """

    ids: tuple[Any, ...] | None = None
    label: Any = None
    fraction: float | None = None
    ids_file: str | Path | None = None
    seed: int = 0
    _given: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        given = tuple(k for k in _KINDS if getattr(self, k) is not None)
        if len(given) != 1:
            what = "none" if not given else ", ".join(given)
            raise DataError(f"a forget specification needs exactly one of {', '.join(_KINDS)}; got {what}.")
        object.__setattr__(self, "_given", given)
        if self.ids is not None:
            if isinstance(self.ids, str | bytes) or not hasattr(self.ids, "__iter__"):
                raise DataError(f"forget ids must be a list of ids, got {self.ids!r}.")
            object.__setattr__(self, "ids", tuple(_plain(i) for i in self.ids))
            if not self.ids:
                raise DataError("the forget set is empty: ids=[] names no example; give at least one id.")
        if self.fraction is not None:
            f = self.fraction
            if isinstance(f, bool) or not isinstance(f, int | float) or not math.isfinite(f) or not 0 < f < 1:
                raise DataError(
                    f"forget fraction={f!r} is invalid; it must be a number with 0 < fraction < 1."
                )
            object.__setattr__(self, "fraction", float(f))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise DataError(f"forget seed={self.seed!r} must be an integer.")

    @property
    def kind(self) -> str:
        """Which of ids / label / fraction / ids_file this spec uses."""
        return self._given[0]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ForgetSpec:
        """Build from a config mapping, rejecting misspelled keys with a suggestion."""
        reject_unknown("forget key", d.keys(), (*_KINDS, "seed"))
        return cls(**d)

    def read_ids(self) -> tuple[Any, ...]:
        """The ids of an ``ids`` or ``ids_file`` spec (the file is read now)."""
        if self.ids is not None:
            return self.ids
        if self.ids_file is None:
            raise DataError(f"a {self.kind!r} forget spec has no explicit ids.")
        path = Path(self.ids_file)
        if not path.is_file():
            raise DataError(f"forget ids_file {str(path)!r} does not exist or is not a file.")
        text = path.read_text()
        if text.lstrip().startswith("["):
            try:
                ids = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"forget ids_file {str(path)!r} is not a valid JSON list: {e}.") from e
        else:
            ids = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        if not ids:
            raise DataError(f"the forget set is empty: ids_file {str(path)!r} lists no id.")
        return tuple(_plain(i) for i in ids)


def _plain(x: Any) -> Any:
    """numpy / torch scalars -> Python scalars, so ids compare and hash like the dataset's values."""
    return x.item() if hasattr(x, "item") and getattr(x, "ndim", 0) == 0 else x
