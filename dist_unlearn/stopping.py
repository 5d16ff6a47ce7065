r"""The forgetting stop rule: stop when every subject looks like unseen data, refuse steps that overshoot.

A forgetting objective (``objective="grad_diff"`` / ``"npo"``) pushes the forget losses up without a natural
end: run to convergence it leaves the forget rows *worse* fitted than data the model never saw, which is as
recognisable as memorised rows. The rule watches the oracle-free evidence the audit uses. At the weights as
given and after every accepted outer step (or every ``stop_every`` optimiser steps of a first-order method)
it computes the per-example losses of the forget set and of *calibration* data the model never saw
(forward passes only, counted as ``loss`` work, 1/3 example pass each) and judges them.

**Per subject** (``forget_subjects`` given, the unit a deletion request names: a person, an author, a
document): the criterion of the audit, :func:`dist_unlearn.eval.subjects.subject_scores` -- each subject's
mean quantile q_S among the calibration losses against its band 1/2 +- h_S (h_S from the subject's rows, the
calibration rows and the calibration subjects' design effect):

- some subject *conspicuous* (q_S > 1/2 + h_S: fitted worse than unseen data): overshoot, the step is
  refused (weights restored, M <- arc_grow M and the subproblem re-solved on the stored Krylov space, so
  no new HVP: a shorter step; a first-order method returns to the last kept point with half the lr);
- else some subject still *recognisable* (q_S < 1/2 - h_S): the step stands, the run goes on (``"continue"``);
- every subject *forgotten*: the step stands and the run stops, stop reason ``"forgotten"``.

**Aggregate** (no subjects, or every subject a single row, whose band is too wide to decide anything): the
forget set as a whole, by the loss-attack AUC  AUC = P(l_forget < l_calibration) + 1/2 P(=)
(:func:`dist_unlearn.eval.mia.loss_mia_auc`): AUC > 1/2 + b continue, |AUC - 1/2| <= b stop, AUC < 1/2 - b
overshoot, b = ``band`` (default 0.1, the verdict's ``auc_tolerance``).

The check at the weights as given decides whether there is anything to forget (a forget set that already
looks unseen is left alone). Each check is recorded (:class:`StopCheck`, per-subject rows included). A
check whose weights stand is passed to the rule's listeners (the ``match_unseen`` objective re-derives its
bins from it, :mod:`dist_unlearn.targets`). The calibration data must be kept apart from the data the final
verdict is judged on (the job splits its holdout, :mod:`dist_unlearn.job.holdout`), otherwise the verdict
would grade the rule on its own evidence.

Where the losses come from is the engine's business: :mod:`dist_unlearn.stop_setup` in-process, the
workers' ``membership_losses`` on Ray (each rank evaluates its shard; only the loss vectors, one float per
row, travel to the driver, which puts them in row order and so maps them to subjects). Either way the outer
loop reads the rule from ``oracle.stop_rule`` (:func:`dist_unlearn.methods.outer_loop.run_outer_loop`); the
first-order loop takes it as an argument (:func:`dist_unlearn.methods._training.optimise`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from dist_unlearn.errors import ConfigError, DataError, NumericalError

STOP_BAND = 0.1
"""Default |AUC - 0.5| at which the forget set counts as indistinguishable (the verdict's auc_tolerance)."""

DECISIONS = ("continue", "stop", "overshoot")


@dataclass
class StopCheck:
    """One evaluation of the rule (kept in ``OuterLoopState.stop_checks`` and the step records).

    Attributes:
        step: the outer (or optimiser) step whose weights were judged (-1: the weights as given).
        auc: forget-vs-calibration loss AUC of the whole forget set.
        forget_loss: mean forget loss.
        calibration_loss: mean calibration loss.
        decision: "continue", "stop" or "overshoot".
        criterion: "per_subject" or "aggregate" (module docstring).
        subjects: per subject (per-subject criterion): ``subject``, ``n_rows``, ``quantile`` (q_S),
            ``halfwidth`` (h_S) and ``status`` (forgotten / recognisable / conspicuous).
        recognisable, conspicuous: the subjects with that status (per-subject criterion).
        damage: the guard's record when it refused the step (the retained rows lost too much), else None.
        verbatim: with the extraction condition: forget rows greedy decoding answers word for word
            (``forget``, their indices ``rows``), the calibration rows' rate at the weights as given
            (``unseen_rate``) and the forget rows that rate allows (``allowed``); else None.
    """

    step: int
    auc: float
    forget_loss: float
    calibration_loss: float
    decision: str
    criterion: str = "aggregate"
    subjects: list[dict[str, Any]] = field(default_factory=list)
    recognisable: list[Any] = field(default_factory=list)
    conspicuous: list[Any] = field(default_factory=list)
    damage: dict[str, Any] | None = None
    verbatim: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _plain(value: Any) -> Any:
    """A JSON-friendly subject value (numpy scalars become Python ones)."""
    return value.item() if isinstance(value, np.generic) else value


Evaluate = Callable[[], tuple[np.ndarray, np.ndarray]]
"""evaluate() -> (forget losses, calibration losses) at the current weights, one float per example."""


Listener = Callable[[np.ndarray, np.ndarray], None]
"""listener(forget losses, calibration losses): told of every check whose weights stand (all but a refused
overshoot; the weights as given always stand)."""


class ForgetStopRule:
    """The rule of the module docstring over an engine's loss evaluator.

    Args:
        evaluate: returns the per-example forget and calibration losses at the current weights, in row order.
        band: aggregate criterion: |AUC - 0.5| <= band stops the run; AUC < 0.5 - band is an overshoot. In
            (0, 0.5).
        forget_subjects: the subject of each forget row (None: aggregate criterion).
        calibration_subjects: the subject of each calibration row (the design effect of the subject bands).
        subject_band: the bands' settings (:class:`dist_unlearn.eval.subjects.SubjectBand`; None: defaults).
        listeners: called with the losses of each check whose weights stand (:data:`Listener`).
        stop_within: stop only when every subject is past this share of its band's recognisable half
            (q_S >= 1/2 - stop_within h_S; aggregate AUC <= 1/2 + stop_within band), in (0, 1]; an
            overshoot is still a subject past the whole band on the other side.
        guard: ``guard(forget losses, calibration losses)`` -> None, or a record of damage to what must be
            kept (:class:`~dist_unlearn.stop_setup.RetainGuard`): the step is then refused like an overshoot.
        verbatim: ``verbatim()`` -> (forget rows, calibration rows) greedy decoding answers word for word at
            the last evaluation (boolean arrays; :mod:`dist_unlearn.answer_leads`), or None. Given, a "stop"
            becomes "continue" while more forget rows are verbatim than the calibration rows' rate at the
            weights as given allows (:func:`~dist_unlearn.answer_leads.verbatim_allowance`): a subject whose
            losses look unseen but whose answers are still extracted word for word is not forgotten.
    """

    def __init__(
        self,
        evaluate: Evaluate,
        band: float = STOP_BAND,
        *,
        forget_subjects: Sequence[Hashable] | None = None,
        calibration_subjects: Sequence[Hashable] | None = None,
        subject_band: Any = None,
        listeners: Sequence[Listener] = (),
        stop_within: float = 1.0,
        guard: Callable[[np.ndarray, np.ndarray], dict[str, Any] | None] | None = None,
        verbatim: Callable[[], tuple[np.ndarray, np.ndarray] | None] | None = None,
    ) -> None:
        from dist_unlearn.eval.subjects import SubjectBand

        if not 0.0 < float(band) < 0.5:
            raise ConfigError(
                f"stop_auc_band={band!r} must be in (0, 0.5): |AUC - 0.5| <= band stops the run."
            )
        self.evaluate, self.band = evaluate, float(band)
        self.forget_subjects = list(forget_subjects) if forget_subjects is not None else None
        self.calibration_subjects = list(calibration_subjects) if calibration_subjects is not None else None
        self.subject_band = subject_band or SubjectBand()
        self.listeners = list(listeners)
        if not 0.0 < float(stop_within) <= 1.0:
            raise ConfigError(f"stop_within={stop_within!r} must be in (0, 1].")
        self.stop_within = float(stop_within)
        self.guard = guard
        self.verbatim = verbatim
        self.unseen_verbatim_rate: float | None = None
        self.last_verbatim: dict[str, Any] | None = None

    @property
    def per_subject(self) -> bool:
        """True when the per-subject criterion applies (subjects given, at least one with two rows)."""
        s = self.forget_subjects
        return s is not None and len(set(s)) < len(s)

    def decide(self, auc: float) -> str:
        """The decision for an AUC (module docstring)."""
        if auc < 0.5 - self.band:
            return "overshoot"
        if auc <= 0.5 + self.stop_within * self.band:
            return "stop"
        return "continue"

    def judge(self, step: int, forget: np.ndarray, calib: np.ndarray) -> StopCheck:
        """The decision for per-example losses (module docstring), without evaluating anything.

        Raises:
            NumericalError: a forget or calibration loss is NaN/inf.
            DataError: ``forget_subjects`` does not have one value per forget row.
        """
        from dist_unlearn.eval.mia import loss_mia_auc

        forget = np.asarray(forget, dtype=np.float64).reshape(-1)
        calib = np.asarray(calib, dtype=np.float64).reshape(-1)
        if not (np.all(np.isfinite(forget)) and np.all(np.isfinite(calib))):
            raise NumericalError(
                f"the forgetting stop rule got non-finite per-example losses at step {step} "
                f"({int(np.sum(~np.isfinite(forget)))} forget, "
                f"{int(np.sum(~np.isfinite(calib)))} calibration)."
            )
        auc = loss_mia_auc(forget, calib)
        check = StopCheck(step, auc, float(forget.mean()), float(calib.mean()), self.decide(auc))
        if not self.per_subject:
            return check
        from dist_unlearn.eval.subjects import subject_scores

        if len(self.forget_subjects) != forget.size:
            raise DataError(
                f"forget_subjects has {len(self.forget_subjects)} values but the forget set {forget.size} "
                "rows: give the subject of each forget row, in its order."
            )
        scores = subject_scores(
            forget,
            self.forget_subjects,
            calib,
            unseen_subjects=self.calibration_subjects,
            band=self.subject_band,
        )
        check.criterion = "per_subject"
        check.subjects = [
            {
                "subject": _plain(s.subject),
                "n_rows": s.n_rows,
                "quantile": s.quantile,
                "halfwidth": s.halfwidth,
                "status": s.status,
            }
            for s in scores
        ]
        check.recognisable = [_plain(s.subject) for s in scores if s.status == "recognisable"]
        check.conspicuous = [_plain(s.subject) for s in scores if s.status == "conspicuous"]
        inner = all(s.quantile >= 0.5 - self.stop_within * s.halfwidth for s in scores)
        check.decision = "overshoot" if check.conspicuous else ("stop" if inner else "continue")
        return check

    def check(self, step: int) -> StopCheck:
        """Evaluate the losses at the current weights, decide, and tell the listeners when the weights stand.

        Raises:
            NumericalError: a forget or calibration loss is NaN/inf.
        """
        forget, calib = (np.asarray(x, dtype=np.float64).reshape(-1) for x in self.evaluate())
        check = self.judge(step, forget, calib)
        damage = self.guard(forget, calib) if self.guard is not None else None
        if damage is not None and step >= 0:
            check.decision, check.damage = "overshoot", damage
        self._extraction(check)
        if check.decision != "overshoot" or step < 0:
            for listener in self.listeners:
                listener(forget, calib)
        return check

    def _extraction(self, check: StopCheck) -> None:
        """The extraction condition (``verbatim``): record it, and turn a "stop" into "continue" while too
        many forget rows are said verbatim. The calibration rows' rate is taken at the first check (the
        weights as given), the model's level on people it never saw."""
        flags = self.verbatim() if self.verbatim is not None else None
        if flags is None:
            return
        from dist_unlearn.answer_leads import verbatim_allowance

        forget, calib = (np.asarray(x, dtype=bool).reshape(-1) for x in flags)
        if self.unseen_verbatim_rate is None:
            self.unseen_verbatim_rate = float(calib.mean()) if calib.size else 0.0
        allowed = verbatim_allowance(forget.size, self.unseen_verbatim_rate)
        check.verbatim = {
            "forget": int(forget.sum()),
            "rows": [int(i) for i in np.flatnonzero(forget)],
            "calibration": int(calib.sum()),
            "unseen_rate": self.unseen_verbatim_rate,
            "allowed": allowed,
        }
        check.verbatim["blocks_stop"] = check.decision == "stop" and int(forget.sum()) > allowed
        if check.verbatim["blocks_stop"]:
            check.decision = "continue"
        self.last_verbatim = check.verbatim

    def describe(self) -> dict[str, Any]:
        """The thresholds in force (for stats and audits)."""
        out = self._describe_losses()
        if self.verbatim is not None:
            out["extraction"] = (
                "and no more forget rows answered word for word by greedy decoding than "
                "floor(n_forget x the calibration rows' verbatim rate at the weights as given)"
            )
        return out

    def _describe_losses(self) -> dict[str, Any]:
        if self.per_subject:
            b = self.subject_band
            return {
                "criterion": "per_subject",
                "subjects": len(set(self.forget_subjects)),
                "band": {"alpha": b.alpha, "min_halfwidth": b.min_halfwidth},
                "stop_if": "every subject's mean quantile q_S among calibration losses is in 1/2 +- h_S",
                "overshoot_if": "some subject has q_S > 1/2 + h_S, conspicuous (step refused, shortened)",
                "quantile": "dist_unlearn.eval.subjects.subject_scores, forget rows vs calibration (unseen)",
            }
        return {
            "criterion": "aggregate",
            "band": self.band,
            "stop_if": f"|AUC - 0.5| <= {self.band}",
            "overshoot_if": f"AUC < {0.5 - self.band:.3f} (step refused, shortened)",
            "auc": "loss attack, forget (members) vs calibration (unseen), 0.5 = indistinguishable",
        }
