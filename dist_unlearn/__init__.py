"""dist_unlearn: CureNewton (cubic-regularized Newton) machine unlearning, local or on Ray + DeepSpeed.

The public entry point is :func:`dist_unlearn.unlearn`; configs and the ``dist-unlearn`` CLI drive whole
experiments. Heavy submodules are imported lazily so that ``import dist_unlearn`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "unlearn": "dist_unlearn.api",
    "UnlearnResult": "dist_unlearn.api",
    "UnlearnOptions": "dist_unlearn.options",
    "cubic_subproblem": "dist_unlearn.solvers",
    "CubicResult": "dist_unlearn.solvers",
    "TensorSpace": "dist_unlearn.linalg",
    "LocalOracle": "dist_unlearn.curvature",
    "available_methods": "dist_unlearn.methods",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dist_unlearn' has no attribute {name!r}")
