"""Check that an oracle's HVP is deterministic before trusting Krylov methods with it.

Lanczos assumes the same linear operator at every iteration; nondeterministic kernels (GPU atomics), dropout
left on, or a resampled batch silently break that and show up as loss of orthogonality and bogus eigenvalues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dist_unlearn.errors import NumericalError


@dataclass
class DeterminismReport:
    """Result of :func:`check_determinism`.

    Attributes:
        max_relative_difference: max over repeats of |Hv_k - Hv_0| / |Hv_0|.
        hvp_norm: |Hv_0|.
        repeats: number of HVPs compared.
        passed: max_relative_difference <= rtol.
        rtol: the tolerance used.
    """

    max_relative_difference: float
    hvp_norm: float
    repeats: int
    passed: bool
    rtol: float


def check_determinism(
    oracle: Any, v: Any = None, *, repeats: int = 2, rtol: float = 1e-6, raise_on_failure: bool = True
) -> DeterminismReport:
    """Apply ``oracle.hvp`` to the same vector ``repeats`` times and compare.

    Works with any :class:`~dist_unlearn.curvature.oracle.CurvatureOracle` (only space operations are used).

    Args:
        oracle: the oracle.
        v: direction (default: the gradient, normalised).
        repeats: how many HVPs (>= 2).
        rtol: allowed relative difference (0 expected on CPU; GPU reductions may need ~1e-6).
        raise_on_failure: raise NumericalError instead of returning a failed report.
    """
    space = oracle.space
    if v is None:
        v = oracle.gradient()
        n = space.norm(v)
        if n > 0:
            space.scale(1.0 / n, v)
    first = oracle.hvp(v)
    ref = space.norm(first)
    worst = 0.0
    for _ in range(max(repeats, 2) - 1):
        other = oracle.hvp(v)
        space.axpy(-1.0, first, other)
        worst = max(worst, space.norm(other) / max(ref, 1e-300))
        space.release(other)
    report = DeterminismReport(worst, ref, max(repeats, 2), worst <= rtol, rtol)
    if raise_on_failure and not report.passed:
        raise NumericalError(
            f"the HVP is not deterministic: repeated products differ by {worst:.3e} (relative) > "
            f"rtol={rtol:g}. "
            "Check that dropout is off, the sample is fixed and deterministic kernels are used."
        )
    return report
