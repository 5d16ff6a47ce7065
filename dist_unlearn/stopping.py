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

Where the losses come from is the engine's business: :class:`LocalMembershipLosses` in-process, the workers'
``membership_losses`` on Ray (each rank evaluates its shard; only the loss vectors, one float per row, travel
to the driver, which puts them in row order and so maps them to subjects). Either way the outer loop reads the
rule from ``oracle.stop_rule`` (:func:`dist_unlearn.methods.outer_loop.run_outer_loop`); the first-order
loop takes it as an argument (:func:`dist_unlearn.methods._training.optimise`).
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

    @property
    def per_subject(self) -> bool:
        """True when the per-subject criterion applies (subjects given, at least one with two rows)."""
        s = self.forget_subjects
        return s is not None and len(set(s)) < len(s)

    def decide(self, auc: float) -> str:
        """The decision for an AUC (module docstring)."""
        if auc < 0.5 - self.band:
            return "overshoot"
        if auc <= 0.5 + self.band:
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
        check.decision = "overshoot" if check.conspicuous else ("continue" if check.recognisable else "stop")
        return check

    def check(self, step: int) -> StopCheck:
        """Evaluate the losses at the current weights, decide, and tell the listeners when the weights stand.

        Raises:
            NumericalError: a forget or calibration loss is NaN/inf.
        """
        forget, calib = (np.asarray(x, dtype=np.float64).reshape(-1) for x in self.evaluate())
        check = self.judge(step, forget, calib)
        if check.decision != "overshoot" or step < 0:
            for listener in self.listeners:
                listener(forget, calib)
        return check

    def describe(self) -> dict[str, Any]:
        """The thresholds in force (for stats and audits)."""
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


class LocalMembershipLosses:
    """In-process evaluator: per-example losses of the forget and calibration sets on the live model.

    Args:
        model, loss_fn: the model and its ``loss_fn(model, batch)`` (its per-example path is used when it has
            one, see :func:`dist_unlearn.models.losses.per_example_losses`).
        forget, calibration: the two data sets (torch Dataset, DataLoader or datasets.Dataset).
        batch_size: rows per forward pass.
        collate_fn: list of rows -> batch.
        cost: a :class:`~dist_unlearn.cost.CostCounter` the forward passes are counted in (``loss``).
    """

    def __init__(
        self,
        model: Any,
        loss_fn: Any,
        forget: Any,
        calibration: Any,
        *,
        batch_size: int = 64,
        collate_fn: Any = None,
        cost: Any = None,
    ) -> None:
        from dist_unlearn.cost import CostCounter

        self.model, self.loss_fn, self.batch_size = model, loss_fn, int(batch_size)
        self.sets = (forget, calibration)
        self.collate_fn = collate_fn
        self.cost = cost if cost is not None else CostCounter()

    def losses_of(self, data: Any, role: str) -> np.ndarray:
        """Per-example losses of ``data`` at the current weights (float64), counted as ``loss`` work."""
        import torch

        from dist_unlearn.data import make_loader
        from dist_unlearn.data.device import model_device, to_device
        from dist_unlearn.models.losses import per_example_losses

        device = model_device(self.model)
        was_training = self.model.training
        self.model.eval()
        out = []
        try:
            with torch.no_grad():
                for batch in make_loader(data, self.batch_size, collate_fn=self.collate_fn):
                    out.append(
                        per_example_losses(self.loss_fn, self.model, to_device(batch, device)).double().cpu()
                    )
        finally:
            self.model.train(was_training)
        losses = torch.cat(out).numpy() if out else np.zeros(0)
        self.cost.add("loss", losses.size, role=role)
        return losses

    def __call__(self) -> tuple[np.ndarray, np.ndarray]:
        return self.losses_of(self.sets[0], "forget"), self.losses_of(self.sets[1], "calibration")


def _length(data: Any) -> int | None:
    inner = getattr(data, "dataset", data)  # a DataLoader's dataset
    try:
        return len(inner) if data is not None else 0
    except TypeError:
        return None  # an iterable without a length: trust it


def check_calibration(
    calibration: Any,
    forget: Any,
    forget_subjects: Sequence[Hashable] | None = None,
    calibration_subjects: Sequence[Hashable] | None = None,
) -> None:
    """Raise DataError when the stop rule cannot run: no (or an empty) calibration or forget set, or subject
    lists that do not give one value per row."""
    sizes = {}
    for name, data in (("calibration", calibration), ("forget", forget)):
        n = sizes[name] = _length(data)
        if n == 0:
            raise DataError(
                f"the forgetting stop rule (option calibration=) needs a non-empty {name} set; "
                f"got {'none' if data is None else 'an empty one'}."
            )
    for name, subjects in (("forget", forget_subjects), ("calibration", calibration_subjects)):
        n = sizes[name]
        if subjects is not None and n is not None and len(subjects) != n:
            raise DataError(
                f"{name}_subjects has {len(subjects)} values but the {name} set has {n} rows: give the "
                f"subject of each {name} row, in the set's order."
            )


def rule_for(evaluate: Evaluate, options: Any, listeners: Sequence[Listener] = ()) -> ForgetStopRule:
    """The rule that ``options`` ask for (``stop_auc_band``, ``forget_subjects``, ``calibration_subjects``)
    over an engine's evaluator."""
    return ForgetStopRule(
        evaluate,
        options.stop_auc_band,
        forget_subjects=options.forget_subjects,
        calibration_subjects=options.calibration_subjects,
        listeners=listeners,
    )


def local_stop_rule(
    model: Any,
    loss_fn: Any,
    forget: Any,
    options: Any,
    *,
    batch_size: int,
    cost: Any,
    targets: Any = None,
) -> ForgetStopRule:
    """The in-process rule of ``options`` (``calibration``, ``stop_auc_band``, ``forget_subjects``,
    ``calibration_subjects``) over the live model; with ``targets`` (the ``match_unseen`` bins) they are set
    by the check of the weights as given and re-derived at every check whose step stands."""
    losses = LocalMembershipLosses(
        model,
        loss_fn,
        forget,
        options.calibration,
        batch_size=batch_size,
        collate_fn=options.collate_fn,
        cost=cost,
    )
    return rule_for(losses, options, [targets.update] if targets is not None else ())
