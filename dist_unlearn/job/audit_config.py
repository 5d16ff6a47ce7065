"""The job.yaml sections that shape the audit: ``audit``, ``probes`` and ``training``.

Example (the defaults)::

    audit:
      alpha: 0.05                 # chance that a subject the model never saw is flagged (over all tests)
      family: subject             # ... per subject; "request": for the whole request (wider bands)
      min_halfwidth: 0.1          # no band narrower than 0.5 +- 0.1 on the quantile scale
      extraction: true            # causal LMs: greedy answers to the forget / holdout prompts
      extraction_retain_rows: 64  # ... and to this many retained rows (are they still answered?)
      format_check: true          # refuse when training rows are not fitted clearly better than the holdout
    probes:                       # robustness probes on a copy (false: none)
      enabled: true
      relearn_max_passes: 1024    # benign relearning: one epoch over the retained rows, at most this many
      targeted_epochs: 3          # targeted relearning: epochs over half of each subject's rows
      lr: 1.0e-4                  # Adam, both relearning probes
      batch_size: 8
      quantize_bits: [8, 4]       # round-to-nearest weight quantization, per output channel
    training: {epochs: 80}        # what the fine-tune cost (or {example_passes: P}): the audit then gives
                                  # the unlearning cost as a share of retraining's
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from dist_unlearn.config import ConfigSection


class AuditSection(ConfigSection):
    """How the per-subject verdict is decided and which evidence it reads (:mod:`dist_unlearn.eval
    .subject_verdict`)."""

    section: ClassVar[str] = "audit"
    alpha: float = Field(default=0.05, gt=0, lt=1)
    """Chance that a subject the model never saw is flagged by any of the tests (``family: subject``), or
    that a request of subjects it never saw gets any flag (``family: request``)."""
    family: Literal["subject", "request"] = "subject"
    """Over what ``alpha`` is the false-alarm rate: each subject, or the whole request (wider bands)."""
    min_halfwidth: float = Field(default=0.1, ge=0, lt=0.5)
    """No band is narrower than 0.5 +- this on the quantile scale."""
    extraction: bool = True
    """Causal LMs: greedy answers to the forget, holdout and a retain sample's prompts (generation cost)."""
    extraction_retain_rows: int = Field(default=64, ge=0)
    """Retained rows whose answers are checked (does the model still answer what it should keep?)."""
    format_check: bool = True
    """Refuse before unlearning when the training rows' loss is not clearly below the holdout's."""


class ProbesSection(ConfigSection):
    """Robustness probes on a copy of the delivered model (:mod:`dist_unlearn.eval.probes`)."""

    section: ClassVar[str] = "probes"
    enabled: bool = True
    relearn_max_passes: int = Field(default=1024, ge=1)
    """Benign relearning: one epoch over the retained rows, capped at this many example passes."""
    targeted_epochs: int = Field(default=3, ge=1)
    """Targeted relearning: epochs over half of each subject's rows (and of each unseen subject's)."""
    lr: float = Field(default=1e-4, gt=0)
    """Adam learning rate of both relearning probes."""
    batch_size: int = Field(default=8, ge=1)
    quantize_bits: list[int] = Field(default_factory=lambda: [8, 4])
    """Round-to-nearest weight quantization widths (per output channel, symmetric)."""

    @field_validator("quantize_bits")
    @classmethod
    def _bits(cls, value: list[int]) -> list[int]:
        bad = [b for b in value if not 2 <= b <= 16]
        if bad:
            raise ValueError(f"quantize_bits {bad} must be between 2 and 16")
        return value


class TrainingSection(ConfigSection):
    """What the fine-tune that produced the model cost: ``epochs`` over the training rows, or
    ``example_passes`` in all. Retraining without the forget rows then costs ``epochs x retained rows``
    (or ``example_passes x retained / training rows``)."""

    section: ClassVar[str] = "training"
    epochs: float | None = Field(default=None, gt=0)
    example_passes: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one(self) -> TrainingSection:
        if (self.epochs is None) == (self.example_passes is None):
            raise ValueError("give exactly one of training.epochs, training.example_passes")
        return self


def probes_switch(value: Any) -> Any:
    """``probes: false`` / ``probes: true`` as the section's ``enabled``."""
    return {"enabled": value} if isinstance(value, bool) else value
