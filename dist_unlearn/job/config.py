"""The schema of ``job.yaml``, the user's unlearning job (``dist-unlearn unlearn --config job.yaml``).

Example (every key; see ``configs/jobs/example.yaml``)::

    model: path/to/finetuned        # save_pretrained folder, or a peft adapter folder (adapter_config.json)
    base_model: null                # adapter only: overrides the base named in adapter_config.json
    merged: false                   # adapter only: also write the merged full model (model/merged/)
    data:
      path: train.jsonl             # .jsonl / .json / .csv / .parquet or a datasets.save_to_disk folder
      id_column: id                 # default "id"; row numbers when absent
      prompt_column: question       # or text_column (plain text), or text_column + label_column
      response_column: answer
      max_length: 256
      subject_column: person        # who each row is about (default: the where: column, else
                                    # holdout_split.group_column, else each forget row is its own subject)
    holdout: unseen.jsonl           # optional: rows the model never saw (the audit's reference)
    holdout_split:                  # the holdout is split: calibration rows (the stop rule) / audit rows
      calibration_fraction: 0.5     #   share of the holdout for the stop rule (0: no stop rule)
      group_column: null            #   keep rows sharing this column's value (a person) on one side
    forget: {ids_file: forget_ids.txt}   # or {ids: [...]} or {where: {column: value or [values]}}
    method: {name: match_unseen}    # optional (DEFAULT_METHOD: match_unseen with the per-subject stop rule,
                                    # stop_within 0.5, retain_tolerance 0.1); any registered method
    workers: 2                      # optional: Ray workers (curvature methods); null = in-process
    zero_stage: 3
    output_dir: unlearned/
    audit: {alpha: 0.05}            # optional: the per-subject verdict's settings (job.audit_config)
    probes: true                    # robustness probes on a copy (false: none; settings: job.audit_config)
    training: {epochs: 3}           # optional: the fine-tune's cost, for "x% of retraining" in the audit

Unknown keys are rejected with the closest allowed key, like the experiment configs
(:mod:`dist_unlearn.config`). Relative paths are relative to the working directory (what ``ray job submit
--working-dir .`` uploads).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field, field_validator, model_validator

from dist_unlearn.config import ConfigSection, MethodConfig, read_yaml_mapping, validate_mapping
from dist_unlearn.errors import ConfigError
from dist_unlearn.job.audit_config import AuditSection, ProbesSection, TrainingSection, probes_switch

#: The method a job runs when ``method:`` is not given: the configuration measured best at removing memorised
#: records subject by subject (benchmarks/RESULTS.md, "Does the job forget every subject of a request?": the
#: demo and fresh cases, against the models retrained without the subjects). ``match_unseen``
#: (:mod:`dist_unlearn.methods.match_unseen`): each forget row's loss is moved into its bin of the unseen
#: (calibration) rows' losses, every subject alike, the retained rows held where they were (KL), the forget
#: term sharpness-aware; the per-subject stop rule ends
#: the run once every subject sits past the inner half of its band (``stop_within``) and refuses steps that
#: cost a sample of retained rows more than 10% of their lead over unseen data (``retain_tolerance``: the
#: learning rate then halves, so it suits the model), and does not stop while more forget rows are answered
#: word for word by greedy decoding than the calibration rows' rate allows (``stop_verbatim``: those rows'
#: weakest answer token is then pushed below its runner-up; on the LoRA case the mean-loss bins alone left
#: 3 of 30 answers extractable, :mod:`dist_unlearn.answer_leads`). It needs calibration rows: give a holdout
#: (or name another method). CureNewton on the same objective and stop rule
#: (``method: {name: cure_newton}``, the engine's route) cost far more on these cases for no better verdict
#: (the equal-cost comparison is in the same section).
DEFAULT_METHOD: dict[str, Any] = {
    "name": "match_unseen",
    "stop_within": 0.5,
    "retain_tolerance": 0.1,
    "stop_verbatim": True,
}


class DataSection(ConfigSection):
    """The data the model was fine-tuned on, and how its rows become tokens."""

    section: ClassVar[str] = "data"
    path: str
    id_column: str = "id"
    text_column: str | None = None
    prompt_column: str | None = None
    response_column: str | None = None
    label_column: str | None = None
    max_length: int = Field(default=256, ge=2)
    chat: bool = False
    prompt_template: str = "{prompt}"
    response_prefix: str = " "
    add_eos: bool = True
    subject_column: str | None = None
    """Who each row is about (a person, an author, a document): the unit the audit judges one by one
    (default: the column of a ``where:`` selector, else ``holdout_split.group_column``, else each forget row
    is its own subject). The holdout needs the same column (:mod:`dist_unlearn.job.subjects`)."""

    @field_validator("prompt_template")
    @classmethod
    def _has_prompt(cls, value: str) -> str:
        if "{prompt}" not in value:
            raise ValueError(f"prompt_template {value!r} must contain the field {{prompt}}")
        return value

    def text_format(self) -> Any:
        """The :class:`~dist_unlearn.data.tokenize.TextFormat` these keys describe."""
        from dist_unlearn.data.tokenize import TextFormat

        return TextFormat.infer(
            text_column=self.text_column,
            prompt_column=self.prompt_column,
            response_column=self.response_column,
            label_column=self.label_column,
            max_length=self.max_length,
            chat=self.chat,
            prompt_template=self.prompt_template,
            response_prefix=self.response_prefix,
            add_eos=self.add_eos,
        )


class ForgetSection(ConfigSection):
    """Exactly one selector of the rows to forget."""

    section: ClassVar[str] = "forget"
    ids: list[int | str] | None = None
    ids_file: str | None = None
    where: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ForgetSection:
        given = [k for k in ("ids", "ids_file", "where") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of ids, ids_file, where (got {', '.join(given) or 'none'})")
        return self

    def selector(self) -> dict[str, Any]:
        """The keyword arguments of :func:`dist_unlearn.data.files.select_forget`."""
        return {k: getattr(self, k) for k in ("ids", "ids_file", "where") if getattr(self, k) is not None}


class HoldoutSplit(ConfigSection):
    """How the holdout is split between the forgetting stop rule and the audit (:mod:`dist_unlearn.stopping`).

    The stop rule watches the forget-vs-calibration loss AUC during the run; the verdict is decided on the
    other part only, so the run is never graded on the data it stopped on.
    """

    section: ClassVar[str] = "holdout_split"
    calibration_fraction: float = Field(default=0.5, ge=0, lt=1)
    """Share of the holdout rows (or groups) given to the stop rule; 0 = no stop rule, all rows audit."""
    group_column: str | None = None
    """Rows with the same value here (one person's records) go to the same part."""


class JobConfig(ConfigSection):
    """The whole job (top level of job.yaml)."""

    section: ClassVar[str] = "top level"
    model: str
    base_model: str | None = None
    merged: bool = False
    dtype: str | None = None
    data: DataSection
    holdout: str | None = None
    holdout_split: HoldoutSplit = Field(default_factory=HoldoutSplit)
    forget: ForgetSection
    method: MethodConfig = Field(default_factory=lambda: MethodConfig(**copy.deepcopy(DEFAULT_METHOD)))
    workers: int | None = Field(default=None, ge=1)
    zero_stage: int = Field(default=0, ge=0, le=3)
    deepspeed_config: dict[str, Any] | str | None = None
    oversubscribe: bool = False
    """Allow more workers than cores / GPUs (they then share them)."""
    output_dir: str = "unlearned"
    retain_sample: int = Field(default=256, ge=1)
    """Retain rows the audit's retain loss is measured on (a fixed, seeded sample)."""
    eval_batch_size: int = Field(default=16, ge=1)
    seed: int = 0
    audit: AuditSection = Field(default_factory=AuditSection)
    probes: ProbesSection = Field(default_factory=ProbesSection)
    training: TrainingSection | None = None

    @field_validator("probes", mode="before")
    @classmethod
    def _probes(cls, value: Any) -> Any:
        return probes_switch(value)

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    def method_options(self) -> dict[str, Any]:
        """The method's options for ``dist_unlearn.unlearn`` (without data/model plumbing)."""
        opts = dict(self.method.options)
        opts.pop("label", None)
        return opts


def validate_method(cfg: JobConfig) -> None:
    """Check the method name and its options now, before any data or model is loaded.

    Raises:
        ConfigError: unknown method (closest name) or option (closest name), or a bad option value.
    """
    from dist_unlearn.methods import get_method
    from dist_unlearn.options import UnlearnOptions

    try:
        spec = get_method(cfg.method.name)
        UnlearnOptions(**cfg.method_options()).with_defaults(spec.defaults)
    except ConfigError as e:
        raise ConfigError(f"job method {cfg.method.name!r}: {e}") from None


def parse_job(data: Any, *, source: str = "<dict>") -> JobConfig:
    """Validate a job mapping.

    Raises:
        ConfigError: unknown keys (with the closest allowed key), missing keys or bad values.
    """
    cfg = validate_mapping(JobConfig, data, source, "job config")
    cfg.data.text_format()  # a layout must follow from the columns named
    validate_method(cfg)
    return cfg


def load_job(path: str | Path, overrides: dict[str, Any] | None = None) -> JobConfig:
    """Read and validate job.yaml; ``overrides`` (top-level keys, e.g. from the CLI; None skipped) win.

    Raises:
        ConfigError: missing file, bad YAML, unknown keys or bad values.
    """
    data = read_yaml_mapping(path, "job config file")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return parse_job(data, source=repr(str(path)))


def as_job(config: JobConfig | dict | str | Path) -> JobConfig:
    """A :class:`JobConfig` from a config object, a mapping or a YAML path."""
    if isinstance(config, JobConfig):
        return config
    if isinstance(config, BaseModel):
        raise ConfigError(f"expected a JobConfig, got {type(config).__name__}")
    if isinstance(config, dict):
        return parse_job(copy.deepcopy(config))
    return load_job(config)
