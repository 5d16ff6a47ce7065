"""Experiment configuration: the YAML schema behind ``dist-unlearn run --config configs/<x>.yaml``.

A config names a task (data + model + how the original model is trained), a forget specification, the
unlearning methods to compare (each with its own options, passed to :func:`dist_unlearn.api.unlearn`), how to
evaluate, where to write, and how to distribute. Every section rejects unknown keys with the closest
allowed key
(``dist_unlearn.errors.reject_unknown``), so a typo never silently falls back to a default.

Example::

    name: digits-sample
    seed: 0
    output_dir: runs/digits_sample
    task: {name: digits_cnn, params: {n_channels: 8}}
    train: {epochs: 30, lr: 0.01, batch_size: 64}
    forget: {fraction: 0.1, seed: 0}
    methods:
      - {name: cure_newton, M: null, max_steps: 5}
      - {name: finetune, epochs: 2}
    workers: null          # N >= 1 runs curvature methods through the distributed engine
    zero_stage: 0
    oversubscribe: false   # true: allow more workers than cores/GPUs (a warning instead of an error)

Relative paths (``deepspeed_config``, ``forget.ids_file``) are relative to the working directory; every
path is checked before anything is trained (``dist_unlearn.preflight``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dist_unlearn.errors import ConfigError, reject_unknown

#: Methods whose update is a second-order solve on a curvature oracle; only these run on the distributed
#: engine when ``workers`` is set (first-order baselines and retraining stay in-process).
CURVATURE_METHODS = ("cure_newton", "cure_newton_stochastic", "damped_newton", "pinv_newton")


class ConfigSection(BaseModel):
    """Base of every section: unknown keys rejected with a suggestion before pydantic sees them."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown(cls, data: Any) -> Any:
        if isinstance(data, dict):
            reject_unknown(f"config key in '{cls._section_name()}'", data.keys(), cls.model_fields.keys())
        return data

    @classmethod
    def _section_name(cls) -> str:
        return getattr(cls, "section", cls.__name__)


class TaskConfig(ConfigSection):
    """Which task and its parameters (validated by the task's own schema, see ``dist_unlearn.tasks``)."""

    section: ClassVar[str] = "task"
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class TrainConfig(ConfigSection):
    """How the original model (and the retrained oracle) are trained. ``None`` = the task's default."""

    section: ClassVar[str] = "train"
    epochs: int | None = Field(default=None, ge=1)
    lr: float | None = Field(default=None, gt=0)
    batch_size: int | None = Field(default=None, ge=1)
    weight_decay: float | None = Field(default=None, ge=0)


class ForgetConfig(ConfigSection):
    """What to forget: exactly one of ``ids``, ``label``, ``fraction`` or ``ids_file``.

    ``label_column`` names the column ``label`` is compared with. With ``group_column``, ``fraction`` draws
    that
    fraction of the groups (e.g. 10% of the authors) and forgets all their rows.
    ``rounds`` > 1 is sequential unlearning: the forget set is cut into ``rounds`` disjoint chunks (for a
    label:
    the label's examples) and each round forgets one more chunk, starting from the previous round's model.
    """

    section: ClassVar[str] = "forget"
    ids: list[int] | None = None
    label: int | str | None = None
    fraction: float | None = Field(default=None, gt=0, lt=1)
    ids_file: str | None = None
    label_column: str = "label"
    group_column: str | None = None
    seed: int = 0
    rounds: int = Field(default=1, ge=1, le=100)

    @model_validator(mode="after")
    def _exactly_one(self) -> ForgetConfig:
        given = [k for k in ("ids", "label", "fraction", "ids_file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of ids, label, fraction, ids_file (got {given or 'none'})")
        if self.group_column is not None and self.fraction is None:
            raise ValueError("group_column needs fraction (the fraction of groups to forget)")
        return self

    @property
    def level(self) -> str:
        """'class' for a label forget set, else 'sample'."""
        return "class" if self.label is not None else "sample"


class MethodConfig(BaseModel):
    """One method to run: its registered name, an optional display name, and its options.

    Options are passed as keyword arguments to ``dist_unlearn.unlearn`` and validated there
    (``UnlearnOptions``: unknown option names rejected with a suggestion).
    """

    model_config = ConfigDict(extra="allow")
    name: str
    label: str | None = None

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def display(self) -> str:
        return self.label or self.name


class EvalConfig(ConfigSection):
    """Evaluation and outputs."""

    section: ClassVar[str] = "eval"
    batch_size: int = Field(default=256, ge=1)
    report: bool = True
    save_models: bool = True
    table: bool = True


class ExperimentConfig(ConfigSection):
    """The whole experiment (top level of the YAML file)."""

    section: ClassVar[str] = "top level"
    name: str = "experiment"
    seed: int = 0
    output_dir: str = "runs/experiment"
    task: TaskConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    forget: ForgetConfig
    methods: list[MethodConfig] = Field(min_length=1)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    workers: int | None = Field(default=None, ge=1)
    zero_stage: int = Field(default=0, ge=0, le=3)
    deepspeed_config: dict[str, Any] | str | None = None
    oversubscribe: bool = False
    """Allow more workers than CPU cores / GPUs (they then share them; a warning is logged)."""
    progress: bool = True

    @field_validator("methods", mode="before")
    @classmethod
    def _methods_list(cls, value: Any) -> Any:
        if isinstance(value, list):
            value = [{"name": m} if isinstance(m, str) else m for m in value]
            labels = [(m.get("label") or m.get("name")) if isinstance(m, dict) else None for m in value]
            dup = sorted({x for x in labels if x is not None and labels.count(x) > 1})
            if dup:
                raise ValueError(f"method names/labels must be unique, repeated: {dup} (set 'label:')")
        return value

    def method_options(self, method: MethodConfig) -> dict[str, Any]:
        """Options for ``dist_unlearn.unlearn``: the method's own, plus the distributed ones for curvature
        methods when ``workers`` is set (a method's own ``workers:`` wins)."""
        opts = method.options
        if self.workers is not None and method.name in CURVATURE_METHODS:
            opts.setdefault("workers", self.workers)
            opts.setdefault("zero_stage", self.zero_stage)
            if self.deepspeed_config is not None:
                opts.setdefault("deepspeed_config", self.deepspeed_config)
        return opts

    def hash(self, *sections: str) -> str:
        """Short stable hash of the named sections (plus the seed), for caching trained models."""
        dump = self.model_dump(mode="json")
        payload = {k: dump[k] for k in sections}
        payload["seed"] = self.seed
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "value_error" and msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        given = e.get("input")
        shown = "" if isinstance(given, dict | list) else f" (got {given!r})"
        lines.append(f"{loc}: {msg}{shown}")
    return f"invalid config {source}:\n  " + "\n  ".join(lines)


def validate_mapping(schema: type[BaseModel], data: Any, source: str, what: str = "config") -> Any:
    """``schema.model_validate(data)`` with every failure as one ConfigError naming ``what`` and ``source``.

    ``reject_unknown`` raises ConfigError inside a validator and pydantic wraps it: unwrapped here so the
    closest-key suggestion keeps its text.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {source} must be a mapping at top level, got {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ConfigError as exc:
        raise ConfigError(f"invalid {what} {source}: {exc}") from None
    except ValidationError as exc:
        for e in exc.errors():
            ctx = e.get("ctx") or {}
            if isinstance(ctx.get("error"), ConfigError):
                loc = ".".join(str(p) for p in e["loc"])
                where = f" at {loc}" if loc else ""
                raise ConfigError(f"invalid {what} {source}{where}: {ctx['error']}") from None
        raise ConfigError(_format_validation_error(exc, source).replace("config", what, 1)) from None


def parse_config(data: dict[str, Any], *, source: str = "<dict>") -> ExperimentConfig:
    """Validate a config mapping.

    Raises:
        ConfigError: unknown keys (with the closest allowed key) or bad values (naming the key and value).
    """
    return validate_mapping(ExperimentConfig, data, source)


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The top-level mapping of a YAML file (``what`` names the file in error messages).

    Raises:
        ConfigError: missing file, bad YAML, or a top level that is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(path)!r} must hold a mapping, got {type(data).__name__}")
    return data


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read and validate a YAML config; ``overrides`` (top-level keys, e.g. from the CLI) win.

    Raises:
        ConfigError: missing file, bad YAML, unknown keys or bad values.
    """
    data = read_yaml_mapping(path)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return parse_config(data, source=repr(str(path)))
