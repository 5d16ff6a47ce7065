"""Machine-independent cost: example passes, counted where the work happens.

One forward + backward pass of one example is one *example pass*. Other kinds of work are weighted by how many
such passes they cost, so that unlearning and retraining compare on any machine:

    | kind          | weight | why                                                        |
    | gradient      | 1      | one forward + one backward                                 |
    | train_step    | 1      | a training (or first-order unlearning) step, per example   |
    | loss          | 1/3    | forward only (a backward costs about two forwards)         |
    | hvp_fd        | 2      | central finite difference = two gradients                  |
    | hvp_exact     | 3      | double backward (or a ratio measured on the model, recorded)|
    | hvp_ggn       | 2      | one JVP + one VJP                                          |
    | generate      | 1/3    | greedy answer of a row, KV-cached: one forward over it     |

Every amount of work also has a *role*, the data it was spent on: ``retain`` (the retained training rows),
``forget`` (the forget set: the request), ``calibration`` (unseen rows read by a stop rule), ``probe``
(robustness probes of an audit) or ``audit`` (the audit's own evidence: attacks and extraction); the last
two are reported apart from the unlearning. ``as_dict()["by_role"]`` splits the total by role, so a reader
sees which part grows with the training set.

A counter is a plain picklable object, so Ray workers count their own work and the driver sums the workers'
counters (:meth:`CostCounter.merge`); local and distributed runs therefore count alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PASS_WEIGHTS: dict[str, float] = {
    "gradient": 1.0,
    "train_step": 1.0,
    "loss": 1.0 / 3.0,
    "hvp_fd": 2.0,
    "hvp_exact": 3.0,
    "hvp_ggn": 2.0,
    "generate": 1.0 / 3.0,
}
"""Default example-pass weight of each kind of work (see the module docstring)."""

ROLES = ("retain", "forget", "calibration", "probe", "audit")
"""What the work was spent on (see the module docstring)."""


class CostCounter:
    """Examples processed per kind of work, and their total in example passes.

    Args:
        weights: overrides of :data:`PASS_WEIGHTS`, e.g. ``{"hvp_exact": 2.6}`` measured on the model.
    """

    def __init__(self, weights: Mapping[str, float] | None = None):
        self.weights: dict[str, float] = {**PASS_WEIGHTS, **dict(weights or {})}
        self.examples: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.role_examples: dict[tuple[str, str], float] = {}

    def add(self, kind: str, n_examples: float, calls: int = 1, role: str = "retain") -> None:
        """Record ``calls`` operations of ``kind`` over ``n_examples`` examples of ``role``."""
        if kind not in self.weights:
            raise KeyError(f"unknown cost kind {kind!r}; known: {sorted(self.weights)}")
        if role not in ROLES:
            raise KeyError(f"unknown cost role {role!r}; known: {list(ROLES)}")
        self.examples[kind] = self.examples.get(kind, 0.0) + float(n_examples)
        self.calls[kind] = self.calls.get(kind, 0) + int(calls)
        key = (role, kind)
        self.role_examples[key] = self.role_examples.get(key, 0.0) + float(n_examples)

    def set_weight(self, kind: str, weight: float) -> None:
        """Use a measured weight for ``kind`` (e.g. exact HVP time / gradient time on this model)."""
        self.weights[kind] = float(weight)

    @property
    def example_passes(self) -> float:
        """Total cost in example passes: sum over kinds of examples x weight."""
        return float(sum(n * self.weights[k] for k, n in self.examples.items()))

    def merge(self, other: CostCounter | Mapping[str, Any]) -> CostCounter:
        """Add another counter (or its :meth:`as_dict`) into this one; returns self."""
        d = other.as_dict() if isinstance(other, CostCounter) else other
        for kind, entry in d.get("by_kind", {}).items():
            self.weights.setdefault(kind, float(entry.get("weight", PASS_WEIGHTS.get(kind, 1.0))))
            self.examples[kind] = self.examples.get(kind, 0.0) + float(entry.get("examples", 0.0))
            self.calls[kind] = self.calls.get(kind, 0) + int(entry.get("calls", 0))
        by_role = d.get("by_role")
        if by_role is None:  # a record without roles: all of it counts as retain work
            by_role = {
                "retain": {"by_kind": {k: e.get("examples", 0.0) for k, e in d.get("by_kind", {}).items()}}
            }
        for role, entry in by_role.items():
            for kind, n in entry.get("by_kind", {}).items():
                key = (role, kind)
                self.role_examples[key] = self.role_examples.get(key, 0.0) + float(n)
        return self

    def snapshot(self) -> dict[str, Any]:
        """A copy of the current state (for differences between two moments, see :func:`cost_between`)."""
        return self.as_dict()

    def passes_by_role(self) -> dict[str, float]:
        """Example passes per role (only roles with work)."""
        out: dict[str, float] = {}
        for (role, kind), n in self.role_examples.items():
            out[role] = out.get(role, 0.0) + n * self.weights[kind]
        return out

    def as_dict(self) -> dict[str, Any]:
        """``{"example_passes": total, "by_kind": {kind: {examples, calls, weight, example_passes}},
        "by_role": {role: {"example_passes": passes, "by_kind": {kind: examples}}}}``."""
        by_kind = {
            k: {
                "examples": n,
                "calls": self.calls.get(k, 0),
                "weight": self.weights[k],
                "example_passes": n * self.weights[k],
            }
            for k, n in sorted(self.examples.items())
        }
        by_role: dict[str, Any] = {}
        for (role, kind), n in sorted(self.role_examples.items()):
            entry = by_role.setdefault(role, {"example_passes": 0.0, "by_kind": {}})
            entry["by_kind"][kind] = n
            entry["example_passes"] += n * self.weights[kind]
        return {"example_passes": self.example_passes, "by_kind": by_kind, "by_role": by_role}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CostCounter:
        """Rebuild a counter from :meth:`as_dict` output."""
        return cls().merge(d)


def cost_between(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """The cost spent between two :meth:`CostCounter.snapshot` results, in the same format."""
    out = CostCounter()
    for kind, entry in after.get("by_kind", {}).items():
        prev = before.get("by_kind", {}).get(kind, {})
        out.weights[kind] = float(entry["weight"])
        n = float(entry["examples"]) - float(prev.get("examples", 0.0))
        c = int(entry["calls"]) - int(prev.get("calls", 0))
        if n or c:
            out.examples[kind] = n
            out.calls[kind] = c
    for role, entry in after.get("by_role", {}).items():
        prev_role = before.get("by_role", {}).get(role, {}).get("by_kind", {})
        for kind, n in entry.get("by_kind", {}).items():
            diff = float(n) - float(prev_role.get(kind, 0.0))
            if diff:
                out.role_examples[(role, kind)] = diff
    return out.as_dict()


def percent_of(cost: Mapping[str, Any] | None, reference: Mapping[str, Any] | None) -> float | None:
    """``100 * cost / reference`` in example passes (None when either is missing or the reference is 0)."""
    if not cost or not reference:
        return None
    ref = float(reference.get("example_passes") or 0.0)
    return 100.0 * float(cost.get("example_passes") or 0.0) / ref if ref > 0 else None
