"""Unlearning methods, registered by name.

Curvature methods (run on any curvature oracle, local or distributed, through :func:`run_curvature_method`):
``cure_newton``, ``cure_newton_stochastic`` (:mod:`.cure_newton`), ``damped_newton``, ``pinv_newton``
(:mod:`.newton_baselines`). Model methods (local model + loss + loaders): ``finetune``, ``grad_ascent``,
``grad_diff``, ``npo``, ``scrub`` (:mod:`.first_order`), ``match_unseen`` (:mod:`.match_unseen`) and
``retrain`` (:mod:`.retrain`).
"""

# importing the method modules registers them
from dist_unlearn.methods import cure_newton, first_order, match_unseen, newton_baselines, retrain  # noqa: E402,F401,I001
from dist_unlearn.methods.base import OuterLoopState, StepRecord, curvature_stats, run_curvature_method
from dist_unlearn.methods.registry import MethodSpec, available_methods, get_method, register_method

__all__ = [
    "MethodSpec",
    "OuterLoopState",
    "StepRecord",
    "available_methods",
    "curvature_stats",
    "get_method",
    "register_method",
    "run_curvature_method",
]
