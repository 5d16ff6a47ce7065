r"""cure_newton's solve with curvature reused across outer steps (option ``reuse_curvature``).

A fresh Krylov solve costs up to ``krylov_max_iter`` Hessian-vector products per outer step, most of a step's
cost. Around a fine-tuned model the Hessian changes slowly, so the Lanczos basis Q and T = Q^T H Q built at
one point serve the following steps (:mod:`dist_unlearn.solvers.reuse`): a later step projects its gradient
on Q and solves the cubic model with B = Q T Q^T (+ flat curvature off span(Q)) on span(Q, r) -- no HVP, so
it costs the gradient of the objective and the ARC trial loss.

- **Building.** Without a first M, the basis is built at the first point with ``krylov_max_iter`` Lanczos
  iterations from g_0 (fewer on breakdown or under ``max_example_passes``): its extreme Ritz values give the
  first M estimate (M_0 = 2 rho^2 / |g_0|, as :func:`~dist_unlearn.methods.cure_newton.estimate_initial_M`,
  which would spend ``eig_iterations`` more HVPs on the same Krylov space), and the first-M search
  re-solves on it. Otherwise a basis is the Krylov space of a fresh solve (forcing tolerance and all): a
  rebuild costs what the step would cost without reuse.
- **Refresh.** ARC judges every step by its actual decrease rho = actual / predicted. A rejected step is
  ARC's own search for M (a very successful step shrinks M tenfold, the next often overshoots; M then grows
  and the step is re-solved on the same basis, no HVP); a stale model shows as steps accepted only as a tie
  (rho < ``arc_eta1``: no real decrease, which would otherwise repeat). After ``curvature_refresh`` such
  steps in a row, the next step is solved afresh and its Krylov space kept (0: never). Measured on the demo
  (2 workers, CureNewton on a forgetting objective): counting rejections too rebuilt the basis twice per
  run for ARC's ordinary M search (7,208 example passes instead of 3,272, the same stop).
- **Where it holds.** Where the Hessian has not changed and the kept space captures it, the reused step is
  the fresh solve's (tests/test_curvature_reuse.py). The true-hard-case probe of a fresh solve
  (:func:`~dist_unlearn.solvers.cubic_subproblem`) is not run on a kept basis; ``reuse_curvature=False``
  solves afresh at every step (the paper's method).
- **Engines.** The basis vectors live where the oracle's vectors live (Ray workers for the engine): the
  projection is one ``dots`` and two linear combinations, so only scalars reach the coordinator. A worker
  restart loses the basis with the worker; the resumed run rebuilds it at the checkpointed point.
"""

from __future__ import annotations

import math
from typing import Any

from dist_unlearn.curvature.oracle import CurvatureOracle
from dist_unlearn.linalg import Vector
from dist_unlearn.methods.base import OuterLoopState
from dist_unlearn.methods.budget import solve_stop
from dist_unlearn.methods.proposal import Proposal, Solve
from dist_unlearn.options import UnlearnOptions
from dist_unlearn.solvers.resolve import KrylovSpace
from dist_unlearn.solvers.reuse import ProjectedSpace, krylov_basis, own_view, project, solve_projected

COMPLEMENT_CURVATURE = 0.0
"""Curvature the kept model assumes off the kept space (flat: a cubic-regularised gradient step there)."""


class KeptCurvatureSolver:
    """Solve / re-solve / initial-M callables of the outer loop over one kept Lanczos basis at a time.

    Args:
        options: the run's options (``krylov_max_iter``, ``curvature_refresh``, ``max_example_passes``).
        state: the loop state (``step`` identifies the point; ``curvature_bases`` counts the bases built).
        fresh: the fresh Krylov solve (``cure_newton.krylov_solver``, keeping its space): a rebuild is
            exactly the solve a run without reuse would do at that point, and its space becomes the basis.
    """

    def __init__(self, options: UnlearnOptions, state: OuterLoopState, fresh: Solve) -> None:
        self.options, self.state, self.fresh = options, state, fresh
        self.basis: KrylovSpace | None = None
        self.basis_key: tuple[int, int] | None = None  # (outer step, id(g)) of the basis' start vector
        self.poor = 0  # steps in a row on a kept basis accepted only as a tie (rho < arc_eta1)

    # ---- the basis -------------------------------------------------------------------------------------
    def _key(self, g: Vector) -> tuple[int, int]:
        return (self.state.step, id(g))

    def _keep(self, basis: KrylovSpace, g: Vector) -> ProjectedSpace:
        self.release()
        self.basis, self.basis_key = basis, self._key(g)
        self.state.curvature_bases += 1
        self.poor = 0
        return own_view(basis, COMPLEMENT_CURVATURE)

    def _solve_fresh(self, oracle: CurvatureOracle, g: Vector, gnorm: float, M: float) -> Proposal:
        """A fresh Krylov solve here; its space becomes the kept basis (the old one stays when the solve
        kept none, after a hard-case restart)."""
        prop = self.fresh(oracle, g, gnorm, M)
        if isinstance(prop.krylov, KrylovSpace):
            prop.krylov = self._keep(prop.krylov, g)
        return prop

    def release(self) -> None:
        """Free the kept basis (at the end of the run, or when a new one replaces it)."""
        if self.basis is not None:
            self.basis.release()
        self.basis, self.basis_key = None, None

    # ---- the loop's callables --------------------------------------------------------------------------
    def initial_M(self, oracle: CurvatureOracle, g: Vector, gnorm: float) -> float:
        """M_0 = 2 rho^2 / |g|, rho = max |Ritz value| of a basis of ``krylov_max_iter`` Lanczos steps built
        here (the first-M search and the later steps solve on it: no separate eigenvalue estimate)."""
        stop = solve_stop(self.options, self.state, oracle)
        basis = krylov_basis(
            oracle.hvp, g, self.options.krylov_max_iter or 30, space=oracle.space,
            stop=None if stop is None else (lambda j: bool(stop(j))),
        )  # fmt: skip
        self._keep(basis, g)
        lo, hi = basis.ritz_extremes()
        rho = max(abs(lo), abs(hi))
        if not (math.isfinite(rho) and rho > 0 and gnorm > 0):
            return 1.0
        return 2.0 * rho * rho / gnorm

    def solve(self, oracle: CurvatureOracle, g: Vector, gnorm: float, M: float | None) -> Proposal:
        """The step at a new point: on the kept basis, or a fresh solve (whose space is kept) when there is
        none or ``curvature_refresh`` steps in a row on it were accepted only as ties."""
        last = self.state.history[-1] if self.state.history else None
        failed = last is not None and last.rho is not None and not last.rho >= self.options.arc_eta1
        if failed and last.accepted and last.hvps == 0:
            self.poor += 1  # accepted only as a tie (no real decrease): the kept model predicts badly
        else:
            self.poor = 0
        refresh = self.options.curvature_refresh
        if self.basis is not None and self.basis_key == self._key(g):  # built here by initial_M
            return _proposal(own_view(self.basis, COMPLEMENT_CURVATURE), M)
        if self.basis is None or self.basis.released or (refresh and self.poor >= refresh):
            return self._solve_fresh(oracle, g, gnorm, M)
        return _proposal(project(self.basis, g, COMPLEMENT_CURVATURE), M)

    def resolve(self, view: Any, M: float) -> Proposal:
        """The step for a new M at the same point (after a rejection, or a first-M try): no HVP. A rejection
        is ARC's own search for M (a very successful step shrinks M tenfold, the next one often overshoots),
        so it does not count against the kept model; the tie-accepted steps do (:meth:`solve`)."""
        prop = _proposal(view, M)
        prop.krylov = None  # the loop keeps the view it has
        return prop


def _proposal(view: ProjectedSpace, M: float) -> Proposal:
    """The step on ``view`` for M (no HVP)."""
    res = solve_projected(view, M)
    return Proposal(
        step=res.step,
        step_norm=float(res.step_norm),
        model_value=float(res.model_value),
        iterations=0,
        hard_case=bool(res.hard_case),
        converged=True,
        message=str(res.message),
        krylov=view,
    )


def reuse_wanted(options: UnlearnOptions, stochastic: bool = False) -> bool:
    """``reuse_curvature``, or its default: on for a forgetting objective (the forget term drives the steps
    and the stop rule ends them: cost matters more than each step's accuracy), off for the retain objective
    (its minimiser is the answer: fresh curvature at each step) and for the stochastic variant (its
    sample, hence its Hessian, changes every step)."""
    if options.reuse_curvature is not None:
        return bool(options.reuse_curvature)
    return options.objective != "retain" and not stochastic


def reuse_possible(options: UnlearnOptions, stochastic: bool = False) -> bool:
    """Reuse is wanted and the Lanczos basis is kept (``store_basis`` or ``reorthogonalize``)."""
    return reuse_wanted(options, stochastic) and bool(options.store_basis or options.reorthogonalize)
