r"""The forgetting stop rule: stop when the forget set looks like unseen data, refuse steps that overshoot.

A forgetting objective (``objective="grad_diff"`` / ``"npo"``) pushes the forget losses up without a natural
end: run to convergence it leaves the forget rows *worse* fitted than data the model never saw, which is as
recognisable as memorised rows. The rule watches the oracle-free evidence the audit uses. After every
accepted outer step it computes, at the new weights, the per-example losses of the forget set and of
*calibration* data the model never saw (forward passes only, counted as ``loss`` work, 1/3 example pass
each) and the loss-attack membership AUC

    AUC = P(l_forget < l_calibration) + 1/2 P(=)      (:func:`dist_unlearn.eval.mia.loss_mia_auc`)

(1: the forget rows are fitted better than unseen data, memorised; 0.5: indistinguishable; 0: fitted worse,
over-unlearned). With b = ``band`` (default 0.1, the verdict's ``auc_tolerance``):

- AUC > 0.5 + b: still recognisable; the step stands and the run goes on (``"continue"``);
- |AUC - 0.5| <= b: indistinguishable; the step stands and the run stops, stop reason ``"forgotten"``;
- AUC < 0.5 - b: overshoot; the step is refused like an ARC rejection (weights restored, M <- arc_grow M,
  the subproblem re-solved on the stored Krylov space, so no new HVP): a larger M gives a shorter step.

The same check runs once before the first step (a forget set that already looks unseen is left alone).
The calibration data must be kept apart from the data the final verdict is judged on (the job splits its
holdout, :mod:`dist_unlearn.job.recipe`), otherwise the verdict would grade the rule on its own evidence.

Where the losses come from is the engine's business: :class:`LocalMembershipLosses` in-process, the workers'
``membership_losses`` on Ray (each rank evaluates its shard; only the loss vectors, one float per row, travel
to the driver). Either way the outer loop reads the rule from ``oracle.stop_rule``
(:func:`dist_unlearn.methods.outer_loop.run_outer_loop`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dist_unlearn.errors import ConfigError, NumericalError

STOP_BAND = 0.1
"""Default |AUC - 0.5| at which the forget set counts as indistinguishable (the verdict's auc_tolerance)."""

DECISIONS = ("continue", "stop", "overshoot")


@dataclass
class StopCheck:
    """One evaluation of the rule (kept in ``OuterLoopState.stop_checks`` and the step records).

    Attributes:
        step: the outer step whose trial weights were judged (-1: the weights as given).
        auc: forget-vs-calibration loss AUC.
        forget_loss: mean forget loss.
        calibration_loss: mean calibration loss.
        decision: "continue", "stop" or "overshoot".
    """

    step: int
    auc: float
    forget_loss: float
    calibration_loss: float
    decision: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Evaluate = Callable[[], tuple[np.ndarray, np.ndarray]]
"""evaluate() -> (forget losses, calibration losses) at the current weights, one float per example."""


class ForgetStopRule:
    """The rule of the module docstring over an engine's loss evaluator.

    Args:
        evaluate: returns the per-example forget and calibration losses at the current weights.
        band: |AUC - 0.5| <= band stops the run; AUC < 0.5 - band is an overshoot. In (0, 0.5).
    """

    def __init__(self, evaluate: Evaluate, band: float = STOP_BAND) -> None:
        if not 0.0 < float(band) < 0.5:
            raise ConfigError(
                f"stop_auc_band={band!r} must be in (0, 0.5): |AUC - 0.5| <= band stops the run."
            )
        self.evaluate, self.band = evaluate, float(band)

    def decide(self, auc: float) -> str:
        """The decision for an AUC (module docstring)."""
        if auc < 0.5 - self.band:
            return "overshoot"
        if auc <= 0.5 + self.band:
            return "stop"
        return "continue"

    def check(self, step: int) -> StopCheck:
        """Evaluate the losses at the current weights and decide.

        Raises:
            NumericalError: a forget or calibration loss is NaN/inf.
        """
        from dist_unlearn.eval.mia import loss_mia_auc

        forget, calib = (np.asarray(x, dtype=np.float64).reshape(-1) for x in self.evaluate())
        if not (np.all(np.isfinite(forget)) and np.all(np.isfinite(calib))):
            raise NumericalError(
                f"the forgetting stop rule got non-finite per-example losses at outer step {step} "
                f"({int(np.sum(~np.isfinite(forget)))} forget, "
                f"{int(np.sum(~np.isfinite(calib)))} calibration)."
            )
        auc = loss_mia_auc(forget, calib)
        return StopCheck(step, auc, float(forget.mean()), float(calib.mean()), self.decide(auc))

    def describe(self) -> dict[str, Any]:
        """The thresholds in force (for stats and audits)."""
        return {
            "band": self.band,
            "stop_if": f"|AUC - 0.5| <= {self.band}",
            "overshoot_if": f"AUC < {0.5 - self.band:.3f} (step refused, M grown, re-solved)",
            "auc": "loss attack, forget (members) vs calibration (unseen), 0.5 = indistinguishable",
        }


class LocalMembershipLosses:
    """In-process evaluator: per-example losses of the forget and calibration sets on the live model.

    Args:
        model, loss_fn: the model and its ``loss_fn(model, batch)`` (its per-example path is used when it has
            one, see :func:`dist_unlearn.curvature.objective.per_example`).
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

    def _losses(self, data: Any, role: str) -> np.ndarray:
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
        return self._losses(self.sets[0], "forget"), self._losses(self.sets[1], "calibration")


def check_calibration(calibration: Any, forget: Any) -> None:
    """Raise DataError when the stop rule cannot run: no (or an empty) calibration or forget set."""
    from dist_unlearn.errors import DataError

    for name, data in (("calibration", calibration), ("forget", forget)):
        inner = getattr(data, "dataset", data)  # a DataLoader's dataset
        try:
            n = len(inner) if data is not None else 0
        except TypeError:
            n = None  # an iterable without a length: trust it
        if n == 0:
            raise DataError(
                f"the forgetting stop rule (option calibration=) needs a non-empty {name} set; "
                f"got {'none' if data is None else 'an empty one'}."
            )
