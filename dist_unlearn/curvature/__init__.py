"""Curvature oracles: loss, gradient and Hessian(-like)-vector products of the retain loss.

:class:`LocalOracle` runs in-process on any ``nn.Module`` with three product modes: ``exact`` (double
backward, :mod:`.hvp_exact`), ``fd`` (central finite differences, :mod:`.hvp_fd`) and ``ggn`` (Gauss-Newton,
:mod:`.ggn`). :func:`check_determinism` verifies an oracle before Krylov methods rely on it.
"""

from dist_unlearn.curvature.attention import ensure_double_backward_attention, math_sdpa
from dist_unlearn.curvature.determinism import DeterminismReport, check_determinism
from dist_unlearn.curvature.ggn import ggn_vp_batch
from dist_unlearn.curvature.hvp_exact import exact_hvp_batch
from dist_unlearn.curvature.hvp_fd import fd_epsilon, fd_hvp
from dist_unlearn.curvature.local import HVP_MODES, LocalOracle
from dist_unlearn.curvature.oracle import CurvatureOracle

__all__ = [
    "CurvatureOracle",
    "LocalOracle",
    "HVP_MODES",
    "check_determinism",
    "DeterminismReport",
    "ensure_double_backward_attention",
    "math_sdpa",
    "exact_hvp_batch",
    "ggn_vp_batch",
    "fd_hvp",
    "fd_epsilon",
]
