r"""Objectives of the curvature methods: which loss the cubic-regularised Newton steps minimise.

The cubic model, ARC and the Krylov solve only see an oracle (loss, gradient, HVP), so a new objective is a
new oracle. With L_r the mean retain loss, l_i the loss of forget example i, alpha = ``forget_weight``,
beta = ``beta`` and l_i^ref the loss of the model as given (before unlearning):

- ``"retain"`` (the paper, the default of ``unlearn()``):  L(w) = L_r(w). Right when the model was trained
  to a stationary point of a *regularised* loss over retain + forget (L2 weight decay, early stopped): then
  grad L_r(w_0) = -(n_f/n_r) grad L_f(w_0) is not zero and the Newton step moves towards the retrained
  model. It does nothing for a model that memorised its data (zero training loss: grad L_r ~ 0).
- ``"grad_diff"`` (the released code's variant):  L(w) = L_r(w) - alpha L_f(w), L_f the mean forget loss.
  Pushes the forget loss up while holding the retain loss. Unbounded below, so the run is bounded by
  ``max_steps``; use it with a small alpha or few steps.
- ``"npo"``:  L(w) = L_r(w) + alpha (2/beta) mean_i softplus(beta (l_i^ref - l_i(w))),  the Negative
  Preference Optimisation term (Zhang et al. 2024) with log pi = -loss. Bounded below: the forget term
  saturates once every forget loss is well above its reference, so ARC converges -- but only once the
  rows are far past data never seen (an overshoot the stop rule has to catch).
- ``"match_unseen"``:  L(w) = L_r(w) + alpha sum_i v_i (1/2) d_i(w)^2,  d_i the distance of l_i to its
  bin of the calibration rows' loss distribution (:mod:`dist_unlearn.targets`: a per-subject quantile
  match, every subject weighted alike). Its minimum puts each subject among data the model never saw, not
  past it; it needs ``calibration=`` (the bins come from those rows) and is updated by the stop rule.

``gradient="influence"`` anchors the retain objective at the stationary-point identity
g_0 = -(n_f/n_r) grad L_f(w_0) (one pass over the forget set): the first gradient is g_0, later gradients
are the retain rows' gradient change since w_0 added to it (:class:`InfluenceFirstGradient`), so a small
retain sample carries the exact first-order signal. Valid only at a stationary point of the training loss
(objective "retain").

Every part is a :class:`~dist_unlearn.curvature.local.LocalOracle` on the same model; the combined oracle
applies updates once, through the first part, and shares its fp32 master weights with the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from dist_unlearn.cost import CostCounter
from dist_unlearn.curvature.local import LocalOracle
from dist_unlearn.linalg.compensated import Compensated
from dist_unlearn.models.losses import per_example_losses

OBJECTIVES = ("retain", "grad_diff", "npo", "match_unseen")
GRADIENTS = ("full", "influence")


class CombinedOracle:
    """L(w) = sum_i c_i L_i(w) over oracles that share one model (a CurvatureOracle).

    Args:
        parts: (coefficient, oracle) pairs; the first oracle owns the weights (apply_update, snapshot,
            restore); the others must have been built on the same parameters.
    """

    def __init__(self, parts: Sequence[tuple[float, LocalOracle]]):
        self.parts = [(float(c), o) for c, o in parts]
        self.primary = self.parts[0][1]
        self.space = self.primary.space
        for _, o in self.parts[1:]:
            o._master = self.primary._master  # one set of master weights (low-precision models)

    @property
    def counters(self) -> dict[str, int]:
        """Operation counts: an HVP of the combined objective counts once (one per part in ``cost``)."""
        return self.primary.counters

    @property
    def cost(self) -> CostCounter:
        """Example passes of every part, merged."""
        total = CostCounter()
        for _, o in self.parts:
            total.merge(o.cost)
        return total

    def _combine64(self, accs: list[list[Compensated]]) -> tuple[torch.Tensor, ...]:
        """The parts' accumulators (each already weighted by its coefficient) merged, rounded once: the
        exact sum the engine's workers accumulate term by term, so the same bits."""
        total = self.primary._acc()
        for acc in accs:
            for t, a in zip(total, acc, strict=True):
                t.merge_(a.hi, a.lo)
        return self.primary._rounded(total)

    def loss(self) -> float:
        return float(sum(c * o.loss() for c, o in self.parts))

    def loss_and_gradient(self) -> tuple[float, Any]:
        values = [o.loss_and_gradient64(coef=c) for c, o in self.parts]
        loss = float(sum(c * v[0] for (c, _), v in zip(self.parts, values, strict=True)))
        g = self._combine64([v[1] for v in values])
        self.space.check_finite(g, "the gradient of the objective")
        return loss, g

    def gradient(self) -> Any:
        return self.loss_and_gradient()[1]

    def hvp(self, v: Any) -> Any:
        """H v of the combined objective: the exact / Gauss-Newton products of the parts summed before
        rounding, or one central difference of the combined gradient (two passes per part)."""
        v = self.primary._check_vector(v, "the HVP direction v")
        if self.primary.hvp_mode == "fd":
            for _, o in self.parts:
                o.count_fd_hvp()

            def gradient() -> tuple[torch.Tensor, ...]:
                return self._combine64(
                    [o._loss_grad64(o.hvp_indices, "fd-hvp gradient", c)[1] for c, o in self.parts]
                )

            hv, self.primary.last_fd_eps = self.primary.fd_product(gradient, v)
        else:
            hv = self._combine64([o.hvp64(v, checked=True, coef=c) for c, o in self.parts])
        self.space.check_finite(hv, f"the Hessian-vector product ({self.primary.hvp_mode})")
        return hv

    def hvp_pass_cost(self) -> float:
        """Example passes one :meth:`hvp` will count (every part's)."""
        return float(sum(o.hvp_pass_cost() for _, o in self.parts))

    def apply_update(self, d: Any, scale: float = 1.0) -> None:
        self.primary.apply_update(d, scale)

    def snapshot(self) -> Any:
        return self.primary.snapshot()

    def restore(self, snap: Any) -> None:
        self.primary.restore(snap)

    def resample(self, seed: int | None) -> None:
        for _, o in self.parts:
            o.resample(seed)

    def __getattr__(self, name: str) -> Any:  # params, model, parameters_vector, ... of the primary
        if name in ("parts", "primary"):
            raise AttributeError(name)
        return getattr(self.primary, name)


class InfluenceFirstGradient:
    """The retain objective anchored at the stationary-point identity (``gradient="influence"``).

    At the weights as given, w_0, a model trained to a stationary point of the loss over retain + forget
    has grad L_r(w_0) = g_0 := -(n_f/n_r) grad L_f(w_0), one pass over the forget set. On the retain rows S
    the oracle reads (all of them, or cure_newton's fixed sample), the objective is

        L~(w) = L_S(w) - c.(w - w_0),      c = grad L_S(w_0) - g_0,

    whose gradient grad L_S(w) - c equals g_0 at w_0 and follows the change of the sampled gradient after
    (a control variate: the sample's own first-order term at w_0 is replaced by the exact one, so a small
    sample carries the exact signal of the forget set and only its curvature and the change of its
    gradient are estimated). Its Hessian is the sample's. The running value c.(w - w_0) follows every
    ``apply_update`` (one dot) and is part of snapshots. With S the whole retain set at an exact stationary
    point, c = 0 and L~ = L_r.
    """

    def __init__(self, retain: LocalOracle, forget: LocalOracle):
        self.retain, self.forget = retain, forget
        self.space = retain.space
        self.forget._master = retain._master
        self.anchor: LinearAnchor | None = None

    @property
    def counters(self) -> dict[str, int]:
        return self.retain.counters

    @property
    def cost(self) -> CostCounter:
        return CostCounter().merge(self.retain.cost).merge(self.forget.cost)

    def loss_and_gradient(self) -> tuple[float, Any]:
        loss, g = self.retain.loss_and_gradient()
        if self.anchor is not None:
            return self.anchor.loss(loss), self.anchor.gradient(g)
        ratio = self.forget.num_examples / self.retain.num_examples
        _, g_f = self.forget.loss_and_gradient64(coef=-ratio)  # summed as the engine's workers sum it
        g0 = self.retain._rounded(g_f)
        self.space.check_finite(g0, "the influence gradient of the forget set")
        self.anchor = LinearAnchor(self.space, self.space.lincomb([1.0, -1.0], [g, g0]))
        return loss, g0

    def gradient(self) -> Any:
        return self.loss_and_gradient()[1]

    def loss(self) -> float:
        loss = self.retain.loss()
        return loss if self.anchor is None else self.anchor.loss(loss)

    def apply_update(self, d: Any, scale: float = 1.0) -> None:
        self.retain.apply_update(d, scale)
        if self.anchor is not None:
            self.anchor.update(d, scale)

    def snapshot(self) -> Any:
        return (self.retain.snapshot(), None if self.anchor is None else self.anchor.value)

    def restore(self, snap: Any) -> None:
        weights, value = snap
        self.retain.restore(weights)
        if self.anchor is not None and value is not None:
            self.anchor.value = value

    def __getattr__(self, name: str) -> Any:
        if name in ("retain", "forget", "anchor"):
            raise AttributeError(name)
        return getattr(self.retain, name)


class LinearAnchor:
    """A fixed linear correction -c.(w - w_0) of an objective: c (a vector) and its running value.

    Args:
        space: the vector space of c.
        c: the correction's gradient (kept; the caller must not release it).
    """

    def __init__(self, space: Any, c: Any) -> None:
        self.space, self.c, self.value = space, c, 0.0

    def update(self, d: Any, scale: float = 1.0) -> None:
        """w <- w + scale d moves c.(w - w_0) by scale c.d."""
        self.value += float(scale) * float(self.space.dot(self.c, d))

    def loss(self, value: float) -> float:
        return float(value) - self.value

    def gradient(self, g: Any) -> Any:
        """g - c (a new vector; g is released)."""
        out = self.space.lincomb([1.0, -1.0], [g, self.c])
        self.space.release(g)
        return out


class IndexedRows(Dataset):
    """``ds[i] -> (row i, i)``: lets a loss look up per-example constants (the NPO reference losses)."""

    def __init__(self, data: Any, collate_fn: Any = None):
        try:
            import datasets

            if isinstance(data, datasets.Dataset) and collate_fn is None:
                data = data.with_format("torch")
        except ImportError:  # pragma: no cover
            pass
        self.data, self.inner = data, collate_fn or default_collate

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.data[i], int(i)

    def collate(self, rows: list[tuple[Any, int]]) -> tuple[Any, torch.Tensor]:
        return self.inner([r for r, _ in rows]), torch.tensor([i for _, i in rows])


class NPOForgetLoss:
    """(2/beta) mean_i softplus(beta (l_i^ref - l_i(w))) on an :class:`IndexedRows` batch (batch, idx).

    Rows with index -1 are padding (the distributed engine's ZeRO-3 chunks): left out of the mean.
    """

    def __init__(self, loss_fn: Any, reference: torch.Tensor, beta: float):
        self.loss_fn, self.reference, self.beta = loss_fn, reference, float(beta)

    def __call__(self, model: torch.nn.Module, batch: tuple[Any, torch.Tensor]) -> torch.Tensor:
        inner, idx = batch
        losses = per_example_losses(self.loss_fn, model, inner)
        valid = idx >= 0
        ref = self.reference.to(losses.device)[idx.clamp_min(0).to(self.reference.device)].to(losses.dtype)
        terms = F.softplus(self.beta * (ref - losses))
        if bool(valid.all()):
            return (2.0 / self.beta) * terms.mean()
        # padding rows (index -1, the engine's ZeRO-3 chunks) are masked out; where() keeps their gradient 0
        valid = valid.to(losses.device)
        ref = torch.where(valid, ref, torch.zeros_like(ref))
        terms = torch.where(valid, F.softplus(self.beta * (ref - losses)), torch.zeros_like(losses))
        return (2.0 / self.beta) * terms.sum() / valid.sum().clamp_min(1)


class BinForgetLoss:
    """mean_i c_i (1/2) d_i^2 on an :class:`IndexedRows` batch (batch, idx): the ``match_unseen`` term.

    ``targets.table[i] = (lo_i, hi_i, c_i)`` (:class:`dist_unlearn.targets.ForgetTargets`, read at each call,
    so the bins a stop rule updates take effect at the next evaluation); the mean over all forget rows is
    F = sum_i v_i (1/2) d_i^2. Rows with index -1 are padding (the engine's ZeRO-3 chunks): left out.
    Rows ``targets.marked`` (answered word for word at the last stop check) add
    w v_i n_forget (1/2) max(lead_i + margin, 0)^2, lead_i their weakest answer token's lead over its
    runner-up (:mod:`dist_unlearn.answer_leads`; w = ``LEAD_WEIGHT``).
    """

    def __init__(self, loss_fn: Any, targets: Any):
        self.loss_fn, self.targets = loss_fn, targets

    def __call__(self, model: torch.nn.Module, batch: tuple[Any, torch.Tensor]) -> torch.Tensor:
        from dist_unlearn.targets import bin_penalty

        inner, idx = batch
        table = self.targets.table
        if table.shape[0] == 0:
            raise RuntimeError("match_unseen: the forget rows' bins were never set (ForgetTargets.update).")
        marked = getattr(self.targets, "marked", None)
        hit = None if marked is None else marked[idx.clamp_min(0).cpu()] & (idx.cpu() >= 0)
        leads = None
        if hit is not None and bool(hit.any()):
            from dist_unlearn.answer_leads import losses_and_leads

            losses, leads = losses_and_leads(self.loss_fn, model, inner, self.targets.skip_token)
        else:
            losses = per_example_losses(self.loss_fn, model, inner)
        valid = (idx >= 0).to(losses.device)
        rows = table[idx.clamp_min(0).to(table.device)].to(device=losses.device, dtype=losses.dtype)
        terms = rows[:, 2] * bin_penalty(losses, rows[:, 0], rows[:, 1])
        if leads is not None:  # rows still said verbatim: push their weakest answer token below its rival
            from dist_unlearn.answer_leads import LEAD_WEIGHT, lead_penalty

            weight = LEAD_WEIGHT * rows[:, 2] * float(self.targets.scale) ** 2  # w v_i n: subjects alike
            lead_terms = weight * lead_penalty(leads.to(losses.dtype))
            terms = terms + torch.where(hit.to(losses.device), lead_terms, torch.zeros_like(lead_terms))
        if bool(valid.all()):
            return terms.mean()
        terms = torch.where(valid, terms, torch.zeros_like(terms))
        return terms.sum() / valid.sum().clamp_min(1)


@torch.no_grad()
def reference_losses(loss_fn: Any, model: torch.nn.Module, rows: IndexedRows, batch_size: int, device: Any):
    """l_i^ref: the per-example losses of the model as it is now, indexed by example (float64)."""
    from dist_unlearn.data.device import to_device

    out = torch.empty(len(rows), dtype=torch.float64)
    for start in range(0, len(rows), batch_size):
        part = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        inner, idx = rows.collate(part)
        out[idx] = per_example_losses(loss_fn, model, to_device(inner, device)).double().cpu()
    return out


def build_oracle(
    model: torch.nn.Module,
    loss_fn: Any,
    retain: Any,
    forget: Any,
    *,
    objective: str = "retain",
    gradient: str = "full",
    forget_weight: float = 1.0,
    beta: float = 0.1,
    targets: Any = None,
    **oracle_kwargs: Any,
) -> Any:
    """The curvature oracle of an objective (module docstring) over ``retain`` (and ``forget``).

    Args:
        model, loss_fn, retain: as for :class:`LocalOracle` (``oracle_kwargs`` go to the retain oracle).
        forget: the forget set (needed unless objective="retain" and gradient="full").
        objective: "retain", "grad_diff", "npo" or "match_unseen".
        gradient: "full" or "influence" (objective "retain" only).
        forget_weight: alpha; beta: the NPO inverse temperature.
        targets: the forget rows' bins (:class:`dist_unlearn.targets.ForgetTargets`), objective
            "match_unseen" only; whoever owns them (the stop rule) keeps them up to date.
    """
    retain_oracle = LocalOracle(model, loss_fn, retain, **oracle_kwargs)
    if objective == "retain" and gradient == "full":
        return retain_oracle
    common = {k: oracle_kwargs[k] for k in ("hvp", "batch_size", "device", "fd_eps") if k in oracle_kwargs}
    common["batch_size"] = retain_oracle.batch_size  # one micro-batch size for every term (as the engine)
    loss_fn = retain_oracle.loss_fn

    def forget_oracle(loss: Any, data: Any, collate: Any, per_row: bool = False) -> LocalOracle:
        """The forget term's oracle on the retain oracle's parameters (cost role "forget"); a per-row loss
        (NPO, match_unseen) has no Gauss-Newton form: exact or FD HVPs."""
        kw = dict(common)
        if per_row:
            kw["hvp"] = "fd" if common.get("hvp") == "fd" else "exact"
        return LocalOracle(
            model, loss, data, collate_fn=collate, params=retain_oracle.params, role="forget", **kw
        )

    collate = oracle_kwargs.get("collate_fn")
    if objective == "retain":  # gradient == "influence"
        return InfluenceFirstGradient(retain_oracle, forget_oracle(loss_fn, forget, collate))
    if objective == "grad_diff":
        part = forget_oracle(loss_fn, forget, collate)
        return CombinedOracle([(1.0, retain_oracle), (-float(forget_weight), part)])
    rows = IndexedRows(forget, collate)
    if objective == "match_unseen":
        if targets is None:
            from dist_unlearn.errors import ConfigError

            raise ConfigError(
                "objective='match_unseen' needs the forget rows' bins from calibration data: pass "
                "calibration=<rows the model never saw> to unlearn()."
            )
        part = forget_oracle(BinForgetLoss(loss_fn, targets), rows, rows.collate, per_row=True)
        return CombinedOracle([(1.0, retain_oracle), (float(forget_weight), part)])
    ref = reference_losses(loss_fn, model, rows, retain_oracle.batch_size, retain_oracle.device)
    retain_oracle.cost.add("loss", len(rows), role="forget")  # the reference forward over the forget set
    part = forget_oracle(NPOForgetLoss(loss_fn, ref, beta), rows, rows.collate, per_row=True)
    return CombinedOracle([(1.0, retain_oracle), (float(forget_weight), part)])
