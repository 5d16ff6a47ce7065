"""What a solve of the outer loop returns, and the shapes of the solver callables the loop takes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dist_unlearn.curvature.oracle import CurvatureOracle
from dist_unlearn.linalg import Vector


@dataclass
class Proposal:
    """A proposed update d and what the solver says about it."""

    step: Vector
    step_norm: float
    model_value: float
    iterations: int
    hard_case: bool = False
    converged: bool = True
    message: str = ""
    krylov: Any = None
    """The kept Krylov space (a ``solvers.KrylovSpace``) when the solver can re-solve for another M."""


Solve = Callable[[CurvatureOracle, Vector, float, float | None], Proposal]
"""solve(oracle, g, |g|, M) -> Proposal (M is None for the Newton baselines)."""

Resolve = Callable[[Any, float], Proposal]
"""resolve(krylov space, M) -> Proposal on the stored space, without an HVP."""

InitialM = Callable[[CurvatureOracle, Vector, float], float]
"""initial_M(oracle, g, |g|) -> first M of the ARC adaptation."""
