"""What every curvature method shares: per-step records, the restartable loop state, and the entry point.

:func:`run_curvature_method` is the seam between the methods and the engines: it runs a registered curvature
method (``cure_newton``, ``cure_newton_stochastic``, ``damped_newton``, ``pinv_newton``) on ANY
:class:`~dist_unlearn.curvature.oracle.CurvatureOracle`. It never learns whether the oracle is a local model
or a group of Ray workers: it only calls the oracle's methods and its vector space.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from dist_unlearn.curvature.oracle import CurvatureOracle
from dist_unlearn.errors import ConfigError
from dist_unlearn.options import UnlearnOptions


@dataclass
class StepRecord:
    """One outer step (accepted or rejected).

    Attributes:
        step: index of the outer iteration (0-based, rejected ones included).
        loss: L_r(w_k) at the start of the step (on the step's sample for the stochastic variant).
        grad_norm: |g_k| = |grad L_r(w_k)|.
        step_norm: |d_k| of the proposed update.
        M: cubic constant used for this step (None for damped / pinv Newton).
        hvps: Hessian-vector products spent in this step (solver + any M estimate).
        gradients: gradient evaluations spent in this step.
        time: wall seconds of this step.
        accepted: False when ARC rejected the step (the weights were restored).
        krylov_iterations: Lanczos / CG / GD iterations of the subproblem solve.
        hard_case: the cubic solve met the hard case.
        model_value: value of the local model at d_k (cubic, or quadratic for the Newton baselines); the
            predicted decrease is -model_value.
        trial_loss: L_r(w_k + d_k) when it was evaluated (ARC), else None.
        rho: actual / predicted decrease (ARC), else None.
        elapsed: wall seconds since the start of the run (restarts included).
        converged: the subproblem solver met its tolerance.
        message: the solver's message.
        forget_auc: forget-vs-calibration loss AUC at the trial weights, when the forgetting stop rule ran
            (:mod:`dist_unlearn.stopping`), else None.
        stop_decision: the stop rule's decision on this step ("continue", "stop", "overshoot"; "" = none).
            An "overshoot" step is rejected like an ARC rejection.
    """

    step: int
    loss: float
    grad_norm: float
    step_norm: float
    M: float | None
    hvps: int
    gradients: int
    time: float
    accepted: bool
    krylov_iterations: int
    hard_case: bool
    model_value: float
    trial_loss: float | None = None
    rho: float | None = None
    elapsed: float = 0.0
    converged: bool = True
    message: str = ""
    forget_auc: float | None = None
    stop_decision: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class OuterLoopState:
    """Everything an outer loop needs to continue after a restart (small and picklable).

    Attributes:
        step: index of the next outer iteration (accepted + rejected so far).
        accepted: accepted updates so far (compared with ``max_steps``).
        M: current cubic constant (ARC-adapted, or the user's); None until first set.
        seed: base seed; the stochastic variant draws step k's mini-batches with seed + k.
        history: the records of all steps so far.
        consecutive_rejections: rejected steps since the last accepted one.
        elapsed: wall seconds spent so far.
        final_loss / final_grad_norm: loss and |g| at the last evaluated point (the returned weights).
        stop_reason: "converged" (|g| <= tol or <= grad_rtol |g_0|), "stalled" (an accepted step shorter
            than step_rtol x the longest), "max_steps", "max_rejections", "no_model_decrease", "forgotten"
            (the forgetting stop rule), "forget_worse_than_unseen" (the rule found the forget set already
            fitted worse than unseen data before the first step), "overshoot" (a Newton baseline's step
            overshot and cannot be shortened) or "".
        finished: the loop stopped (a later call evaluates once and stops again).
        initial_grad_norm: |g_0| (the reference of ``grad_rtol`` and of the Krylov forcing sequence).
        max_step_norm: the longest accepted |d| so far (the reference of ``step_rtol``).
        last_step_small: the last accepted step was below ``step_rtol`` x ``max_step_norm``.
        stop_checks: the forgetting stop rule's evaluations (:class:`dist_unlearn.stopping.StopCheck` dicts),
            the one before the first step included; empty without the rule.
        forgotten: the stop rule found the forget set indistinguishable after the last accepted step.
        curvature_bases: Lanczos bases built for curvature reuse (``reuse_curvature``; 0 without it).
    """

    step: int = 0
    accepted: int = 0
    M: float | None = None
    seed: int = 0
    history: list[StepRecord] = field(default_factory=list)
    consecutive_rejections: int = 0
    elapsed: float = 0.0
    final_loss: float | None = None
    final_grad_norm: float | None = None
    stop_reason: str = ""
    finished: bool = False
    initial_grad_norm: float | None = None
    max_step_norm: float = 0.0
    last_step_small: bool = False
    stop_checks: list[dict[str, Any]] = field(default_factory=list)
    forgotten: bool = False
    curvature_bases: int = 0


StepCallback = Callable[[StepRecord, OuterLoopState], None]


def curvature_stats(oracle: CurvatureOracle, state: OuterLoopState) -> dict[str, Any]:
    """The ``UnlearnResult.stats`` entries a curvature run contributes (for local and distributed engines).

    Keys: total_hvps, total_gradients, total_losses (the oracle's counters), hvps_per_accepted_step,
    curvature_bases (Lanczos bases built for reuse), final_M, stop_reason, final_loss, final_grad_norm (at the
    returned weights, on the last sample for the stochastic variant), num_steps, accepted_steps,
    ``stop_checks`` (only when the forgetting stop rule ran), and ``cost`` (``oracle.cost.as_dict()``:
    example passes by kind and role, see :mod:`dist_unlearn.cost`; None for an oracle that does not count).
    """
    counters = getattr(oracle, "counters", {}) or {}
    counter = getattr(oracle, "cost", None)
    hvps = int(counters.get("hvps", 0))
    return {
        "cost": counter.as_dict() if counter is not None else None,
        "total_hvps": hvps,
        "hvps_per_accepted_step": hvps / state.accepted if state.accepted else None,
        "curvature_bases": state.curvature_bases,
        "total_gradients": int(counters.get("gradients", 0)),
        "total_losses": int(counters.get("losses", 0)),
        "final_M": state.M,
        "stop_reason": state.stop_reason,
        "final_loss": state.final_loss,
        "final_grad_norm": state.final_grad_norm,
        "num_steps": len(state.history),
        "accepted_steps": state.accepted,
        **({"stop_checks": list(state.stop_checks)} if state.stop_checks else {}),
    }


def run_curvature_method(
    name: str,
    oracle: CurvatureOracle,
    options: UnlearnOptions | None = None,
    *,
    state: OuterLoopState | None = None,
    on_step: StepCallback | None = None,
) -> list[StepRecord]:
    """Run the curvature method ``name`` on ``oracle`` until it stops; the oracle's weights are updated.

    Args:
        name: ``cure_newton``, ``cure_newton_stochastic``, ``damped_newton`` or ``pinv_newton``.
        oracle: any curvature oracle (local or distributed).
        options: validated options (None: defaults). Options left at None take the method's defaults.
        state: loop state to continue from (a checkpoint); None starts fresh with ``seed=options.seed``.
            It is advanced in place, so the caller can read ``final_loss``, ``stop_reason``, ``M`` after.
        on_step: called after each outer step (accepted or rejected) with the record and the state, after the
            weights were updated or restored: the right moment to checkpoint weights + state.

    Each outer step takes one ``oracle.snapshot()`` before applying its update (ARC rejection and NaN recovery
    restore it) and drops it once the next point's loss and gradient are known to be finite.

    Returns:
        ``state.history``: the records of every step, those before a restart included.

    Raises:
        ConfigError: unknown method, or a method that is not a curvature method.
        NumericalError: NaN/inf loss or gradient (the last good weights are restored first).
    """
    from dist_unlearn.methods.registry import available_methods, get_method

    spec = get_method(name)
    if not spec.curvature:
        raise ConfigError(
            f"method {name!r} does not run on a curvature oracle; curvature methods: "
            f"{', '.join(available_methods(curvature=True))}."
        )
    options = (options or UnlearnOptions()).with_defaults(spec.defaults)
    if state is None:
        state = OuterLoopState(seed=options.seed)
    spec.run(oracle, options, state, on_step)
    return state.history
