"""Where the forgetting stop rule gets its evidence, and the rule that options ask for.

- :class:`LocalMembershipLosses`: the per-example forget and calibration losses of the live model
  (in-process; on Ray the workers' ``membership_losses`` do the same, :mod:`dist_unlearn.distributed`);
- :class:`RetainGuard`: refuses steps that cost a fixed sample of retained rows too much;
- :func:`rule_for` / :func:`local_stop_rule`: the :class:`~dist_unlearn.stopping.ForgetStopRule` of an
  :class:`~dist_unlearn.options.UnlearnOptions` (band, subjects, ``stop_within``, the ``match_unseen`` bins,
  the guard); :func:`check_calibration`: the inputs it needs, checked before any work.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from dist_unlearn.errors import ConfigError, DataError
from dist_unlearn.stopping import Evaluate, ForgetStopRule, Listener


class LocalMembershipLosses:
    """In-process evaluator: per-example losses of the forget and calibration sets on the live model.

    Args:
        model, loss_fn: the model and its ``loss_fn(model, batch)`` (its per-example path is used when it has
            one, see :func:`dist_unlearn.models.losses.per_example_losses`).
        forget, calibration: the two data sets (torch Dataset, DataLoader or datasets.Dataset).
        batch_size: rows per forward pass.
        collate_fn: list of rows -> batch.
        cost: a :class:`~dist_unlearn.cost.CostCounter` the forward passes are counted in (``loss``).
        verbatim: also record, from the same forward passes, which rows greedy decoding would answer word
            for word (:mod:`dist_unlearn.answer_leads`; causal LMs only): :attr:`verbatim` maps the role of
            the last evaluation of each set to a boolean array.
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
        verbatim: bool = False,
    ) -> None:
        from dist_unlearn.answer_leads import end_token, supports_leads
        from dist_unlearn.cost import CostCounter

        self.model, self.loss_fn, self.batch_size = model, loss_fn, int(batch_size)
        self.sets = (forget, calibration)
        self.collate_fn = collate_fn
        self.cost = cost if cost is not None else CostCounter()
        self.track_verbatim = bool(verbatim) and supports_leads(loss_fn)
        self.skip_token = end_token(model) if self.track_verbatim else None
        self.verbatim: dict[str, np.ndarray] = {}

    def losses_of(self, data: Any, role: str) -> np.ndarray:
        """Per-example losses of ``data`` at the current weights (float64), counted as ``loss`` work."""
        import torch

        from dist_unlearn.answer_leads import losses_and_leads
        from dist_unlearn.data import make_loader
        from dist_unlearn.data.device import model_device, to_device
        from dist_unlearn.models.losses import per_example_losses

        device = model_device(self.model)
        was_training = self.model.training
        self.model.eval()
        out, leads = [], []
        try:
            with torch.no_grad():
                for batch in make_loader(data, self.batch_size, collate_fn=self.collate_fn):
                    batch = to_device(batch, device)
                    if self.track_verbatim:  # the greedy-answer test rides on the loss's forward pass
                        loss, lead = losses_and_leads(self.loss_fn, self.model, batch, self.skip_token)
                        leads.append(lead.double().cpu())
                    else:
                        loss = per_example_losses(self.loss_fn, self.model, batch)
                    out.append(loss.double().cpu())
        finally:
            self.model.train(was_training)
        losses = torch.cat(out).numpy() if out else np.zeros(0)
        if self.track_verbatim:
            self.verbatim[role] = (torch.cat(leads).numpy() > 0) if leads else np.zeros(0, dtype=bool)
        self.cost.add("loss", losses.size, role=role)
        return losses

    def verbatim_flags(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(forget, calibration) rows said verbatim at the last evaluation; None when not tracked."""
        if not self.track_verbatim or not {"forget", "calibration"} <= self.verbatim.keys():
            return None
        return self.verbatim["forget"], self.verbatim["calibration"]

    def __call__(self) -> tuple[np.ndarray, np.ndarray]:
        return self.losses_of(self.sets[0], "forget"), self.losses_of(self.sets[1], "calibration")


class RetainGuard:
    """Refuse a step that costs the retained rows too much (a ``guard`` of :class:`ForgetStopRule`).

    With r(w) the mean loss of a fixed, seeded sample of retained rows and r_0, c_0 the retained sample's
    and the calibration rows' mean losses at the weights as given, a step is damage when

        r(w) > r_0 + tolerance (c_0 - r_0):

    the retained rows may give up at most ``tolerance`` of their lead over data the model never saw; and,
    with ``unseen_tolerance``, when the calibration rows' mean loss c(w) moved by more than that share,
    |c(w) / c_0 - 1| > unseen_tolerance (the model's behaviour on data it never saw must stay). A refused
    step is shortened (a larger M; a first-order run returns to its last good point with half the learning
    rate), so the guard also finds a learning rate that suits the model.

    Args:
        losses: () -> per-example losses of the retained sample at the current weights.
        tolerance: the share of the lead that may be lost, > 0.
        unseen_tolerance: the relative change of the calibration loss allowed (None: not watched).
    """

    def __init__(
        self, losses: Callable[[], np.ndarray], tolerance: float, unseen_tolerance: float | None = None
    ) -> None:
        if not float(tolerance) > 0:
            raise ConfigError(f"retain_tolerance={tolerance!r} must be > 0 (or None: no guard).")
        self.losses, self.tolerance = losses, float(tolerance)
        self.unseen_tolerance = unseen_tolerance
        self.r0: float | None = None
        self.c0: float | None = None

    def __call__(self, forget: np.ndarray, calib: np.ndarray) -> dict[str, Any] | None:
        r = float(np.mean(self.losses()))
        if self.r0 is None:  # the weights as given: the baseline
            self.r0, self.c0 = r, float(np.mean(calib))
            return None
        limit = self.r0 + self.tolerance * max(self.c0 - self.r0, 0.0)
        c = float(np.mean(calib))
        moved = abs(c / self.c0 - 1.0) if self.c0 else 0.0
        if r <= limit and (self.unseen_tolerance is None or moved <= self.unseen_tolerance):
            return None
        return {
            "calibration_loss": c,
            "calibration_change": moved,
            "retain_sample_loss": r,
            "limit": limit,
            "retain_loss_given": self.r0,
            "calibration_loss_given": self.c0,
        }


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


def rule_for(
    evaluate: Evaluate, options: Any, targets: Any = None, push: Listener | None = None
) -> ForgetStopRule:
    """The rule that ``options`` ask for (``stop_auc_band``, ``forget_subjects``, ``calibration_subjects``,
    ``stop_within``) over an engine's evaluator; with the ``match_unseen`` bins ``targets``, the bins are
    re-derived at every check that stands (``push``: how, default ``targets.update``)."""
    listeners = [] if targets is None else [push or targets.update]
    return ForgetStopRule(
        evaluate,
        options.stop_auc_band,
        forget_subjects=options.forget_subjects,
        calibration_subjects=options.calibration_subjects,
        listeners=listeners,
        stop_within=options.stop_within,
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
    retain: Any = None,
) -> ForgetStopRule:
    """The in-process rule of ``options`` (``calibration``, ``stop_auc_band``, ``forget_subjects``,
    ``calibration_subjects``, ``stop_verbatim``) over the live model; with ``targets`` (the ``match_unseen``
    bins) they are set by the check of the weights as given and re-derived at every check whose step stands,
    and with ``stop_verbatim`` the rows greedy decoding still answers word for word are marked on them."""
    losses = LocalMembershipLosses(
        model,
        loss_fn,
        forget,
        options.calibration,
        batch_size=batch_size,
        collate_fn=options.collate_fn,
        cost=cost,
        verbatim=bool(getattr(options, "stop_verbatim", False)),
    )
    rule = rule_for(losses, options, targets)
    if losses.track_verbatim:
        rule.verbatim = losses.verbatim_flags
        if targets is not None and hasattr(targets, "mark"):
            rule.listeners.append(lambda forget, calib: targets.mark(verbatim_to_push(rule, losses)))
    if options.retain_tolerance is not None and retain is not None:
        from dist_unlearn.data.split import sample_of

        sample = sample_of(retain, GUARD_SAMPLE, options.seed)  # the engine draws the same rows
        rule.guard = RetainGuard(
            lambda: losses.losses_of(sample, "retain"), options.retain_tolerance, options.unseen_tolerance
        )
    return rule


def verbatim_to_push(rule: ForgetStopRule, losses: LocalMembershipLosses) -> np.ndarray | None:
    """The forget rows the ``match_unseen`` objective should push off their verbatim answers: those said
    verbatim at the last check, when only they kept the run from stopping (every subject's losses already
    look unseen; earlier the bins alone lift most of them, and an extra term would only disturb the
    retained rows); else None."""
    last = getattr(rule, "last_verbatim", None)
    if not last or not last.get("blocks_stop"):
        return None
    return losses.verbatim_flags()[0]


GUARD_SAMPLE = 64
"""Retained rows the guard watches (fixed and seeded: its cost does not grow with the data)."""
