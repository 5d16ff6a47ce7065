r"""What an :func:`dist_unlearn.unlearn` run can say about forgetting, with or without unseen data.

**With calibration data** (``calibration=``, rows the model never saw) the stop rule judged the forget set
(per subject when ``forget_subjects`` are given, :mod:`dist_unlearn.stopping`); its last check is the
answer: ``forgotten`` when every subject looked like unseen data, else ``not_forgotten`` with the subjects
still recognisable or conspicuous.

**Without** it nothing can show that a row now looks unseen; what can be shown is whether the forget rows
are still fitted like training data. The reference is a fixed-size sample of retained rows before the run:
their losses say what "fitted" looks like for this model. A forget row is *still fitted* when its loss after
the run is at most the ``FITTED_QUANTILE`` (95%) quantile of those retained losses,

    still_i = [ l_i(w_after) <= Q_0.95(l_retain(w_before)) ],

and the run is ``nothing_forgotten`` when at least half of the forget rows are still fitted. A model that
memorised its forget set fits those rows like the rest; the retain objective (``objective="retain"``, the
paper's) only moves what the retained rows' loss moves, which for memorised rows is nothing, so they stay
fitted: :func:`unlearn` then warns, naming the objective and ``calibration=``. (Ranks against the retained
rows *after* the run would mislead: near zero loss, a step that fits the retained rows ten times better and
leaves the forget rows where they were reorders them without forgetting anything.) Otherwise most forget
rows left the training fit (``moved_unverified``): whether they now look unseen, or were pushed past it,
needs unseen data. The loss-attack AUC of forget vs retained rows, before and after, is recorded too.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from dist_unlearn.data.split import sample_of
from dist_unlearn.eval.mia import loss_mia_auc

RETAIN_SAMPLE = 256
"""Retained rows the evidence is measured on (fixed, seeded: the cost does not grow with the data)."""
FITTED_QUANTILE = 0.95
"""The retained rows' loss quantile (before the run) up to which a forget row counts as still fitted."""


class MovementEvidence:
    """Forget-vs-retained-rows evidence before and after a run without calibration data (module docstring).

    Args:
        model, loss_fn: the live model and its loss (per-example path when it has one).
        forget, retain: the data sets (torch Dataset / DataLoader / datasets.Dataset).
        batch_size, collate_fn: forward passes.
        seed: the retained-row sample's seed.
        cost: a :class:`~dist_unlearn.cost.CostCounter` the forward passes are counted in (roles forget /
            retain, kind ``loss``).
    """

    def __init__(self, model: Any, loss_fn: Any, forget: Any, retain: Any, *, batch_size: int,
                 collate_fn: Any, seed: int, cost: Any) -> None:  # fmt: skip
        from dist_unlearn.stop_setup import LocalMembershipLosses

        sample = sample_of(retain, RETAIN_SAMPLE, seed)
        self.evaluate = LocalMembershipLosses(
            model, loss_fn, forget, sample, batch_size=batch_size, collate_fn=collate_fn, cost=cost
        )
        self.n_retain = len(sample)
        self.before = self._measure()

    def _measure(self) -> tuple[np.ndarray, np.ndarray]:
        forget, sample = self.evaluate.sets
        return self.evaluate.losses_of(forget, "forget"), self.evaluate.losses_of(sample, "retain")

    def finish(self, method: str, objective: str | None) -> dict[str, Any]:
        """Measure after the run, decide, warn when nothing was forgotten; returns ``stats["forgetting"]``."""
        (f0, r0), (f1, r1) = self.before, self._measure()
        fitted = float(np.quantile(r0, FITTED_QUANTILE))
        share = float(np.mean(f1 <= fitted))
        what = f"method={method!r}" + (f", objective={objective!r}" if objective else "")
        record = {
            "criterion": f"forget rows still fitted like training data: loss <= the retained rows' "
            f"{FITTED_QUANTILE:.0%} quantile before the run (no unseen data)",
            "still_fitted_share": share,
            "fitted_loss": fitted,
            "forget_loss": [float(f0.mean()), float(f1.mean())],
            "retain_sample_loss": [float(r0.mean()), float(r1.mean())],
            "forget_vs_retain_auc": [loss_mia_auc(f0, r0), loss_mia_auc(f1, r1)],
            "retain_sample_rows": self.n_retain,
        }
        moved = f"forget loss {f0.mean():.4g} -> {f1.mean():.4g}"
        fit = f"the retained rows' {FITTED_QUANTILE:.0%} quantile {fitted:.4g}"
        if share >= 0.5:
            name = objective or method
            message = (
                f"unlearn({what}) left {share:.0%} of the forget rows fitted like training data (loss at "
                f"most {fit}; {moved}): nothing shows that anything was forgotten. The {name!r} objective "
                "moves the forget rows only as far as the retained rows' loss does, which is nothing for "
                "rows the model memorised. Pass calibration=<rows the model never saw> (and "
                "forget_subjects=) to forget them subject by subject (objective 'match_unseen' with the "
                "stop rule)."
            )
            warnings.warn(message, UserWarning, stacklevel=4)  # the caller of unlearn()
            return {"status": "nothing_forgotten", "message": message, **record}
        message = (
            f"{1 - share:.0%} of the forget rows left the training fit (loss above {fit}; {moved}); "
            "without unseen data nothing shows whether they now look like data the model never saw or "
            "were pushed past it: pass calibration= to judge and stop there."
        )
        return {"status": "moved_unverified", "message": message, **record}


def from_stop_checks(checks: list[dict[str, Any]]) -> dict[str, Any]:
    """``stats["forgetting"]`` of a run with the stop rule: its last check's verdict."""
    last = checks[-1]
    done = last["decision"] == "stop"
    record = {
        "status": "forgotten" if done else "not_forgotten",
        "criterion": last.get("criterion", "aggregate"),
        "forget_vs_calibration_auc": last["auc"],
        "recognisable": list(last.get("recognisable", [])),
        "conspicuous": list(last.get("conspicuous", [])),
        "subjects": list(last.get("subjects", [])),
    }
    if not done:
        record["message"] = (
            "the stop rule's last check did not find every subject inside its band: "
            f"recognisable {record['recognisable']}, conspicuous {record['conspicuous']} "
            f"(aggregate AUC {last['auc']:.3f})."
        )
    return record


def movement_evidence(model: Any, loss_fn: Any, forget: Any, retain: Any, options: Any, method: str) -> Any:
    """The evidence of a run without calibration data, measured before it (None with calibration data:
    the stop rule judges then; and for retraining, which starts from scratch)."""
    if options.calibration is not None or method == "retrain":
        return None
    from dist_unlearn.cost import CostCounter

    return MovementEvidence(
        model, loss_fn, forget, retain, batch_size=int(options.batch_size or 64),
        collate_fn=options.collate_fn, seed=options.seed, cost=CostCounter(),
    )  # fmt: skip


def forgetting_record(
    checks: list[dict[str, Any]] | None, movement: Any, method: str = "", objective: str | None = None
) -> dict[str, Any]:
    """``stats["forgetting"]``: what the run can say about forgetting (module docstring) -- the stop rule's
    last check, else the forget rows' movement against retained rows (a warning when nothing moved), else
    nothing."""
    if checks:
        return from_stop_checks(checks)
    if movement is not None:
        record = movement.finish(method, objective)
        record["cost_example_passes"] = movement.evaluate.cost.example_passes
        return record
    return {
        "status": "not_measured",
        "message": "no forget set and retain set to compare, or no calibration data: nothing was measured.",
    }
