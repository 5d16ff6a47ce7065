"""Unlearning methods registered by name.

Two kinds of method share the registry:

- *curvature* methods (``cure_newton``, ``cure_newton_stochastic``, ``damped_newton``, ``pinv_newton``) run on
  any :class:`~dist_unlearn.curvature.oracle.CurvatureOracle`, local or distributed; their ``run`` is
  ``run(oracle, options, state, on_step) -> None`` (it advances ``state``, see
  :func:`dist_unlearn.methods.base.run_curvature_method`).
- *model* methods (first-order baselines and ``retrain``) act on the local model; their ``run`` is
  ``run(model, loss_fn, retain, forget, options) -> ModelRun``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dist_unlearn.errors import ConfigError, suggest


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    Attributes:
        name: registry name.
        run: the implementation (signature depends on ``curvature``, see the module docstring).
        curvature: True for methods that run on a curvature oracle.
        defaults: values for options the user left at None (e.g. ``max_steps``, ``lr``, ``epochs``).
        needs: which data the method reads: a subset of {"retain", "forget"}.
        summary: one line for listings.
    """

    name: str
    run: Callable[..., Any]
    curvature: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    needs: frozenset[str] = frozenset({"retain"})
    summary: str = ""


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    *,
    curvature: bool = False,
    defaults: dict[str, Any] | None = None,
    needs: tuple[str, ...] = ("retain",),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``run`` under ``name``.

    Args:
        name: registry name (must be new).
        curvature: True when ``run(oracle, options, state, on_step)`` works on a curvature oracle.
        defaults: option values used when the user leaves them at None.
        needs: the data sets the method reads ("retain", "forget").
    """

    def deco(run: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ConfigError(f"method {name!r} is registered twice")
        doc = (run.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = MethodSpec(
            name=name,
            run=run,
            curvature=curvature,
            defaults=dict(defaults or {}),
            needs=frozenset(needs),
            summary=doc[0] if doc else "",
        )
        return run

    return deco


def _ensure_loaded() -> None:
    # the method modules register themselves when the package is imported
    import dist_unlearn.methods  # noqa: F401


def get_method(name: str) -> MethodSpec:
    """The method registered as ``name``.

    Raises:
        ConfigError: unknown name, with the closest registered name and the full list.
    """
    _ensure_loaded()
    if not isinstance(name, str) or name not in _REGISTRY:
        allowed = sorted(_REGISTRY)
        hint = suggest(name, allowed) if isinstance(name, str) else ""
        raise ConfigError(f"unknown unlearning method {name!r}.{hint} Available: {', '.join(allowed)}.")
    return _REGISTRY[name]


def available_methods(*, curvature: bool | None = None) -> list[str]:
    """Registered method names, sorted (``curvature=True/False`` filters by kind)."""
    _ensure_loaded()
    return sorted(n for n, s in _REGISTRY.items() if curvature is None or s.curvature == curvature)
