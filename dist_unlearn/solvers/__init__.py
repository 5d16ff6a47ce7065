"""Pure-maths solvers on the VectorSpace protocol (no torch.nn, no Ray).

Every solver takes a ``matvec`` callable (v -> H v) and vectors of a
:class:`~dist_unlearn.linalg.VectorSpace`; it only calls the protocol (plus the optional ``lincomb`` and
``random_like``), so a sharded space on Ray workers plugs in unchanged. Scalars (Lanczos alphas/betas, the
small tridiagonal problems) are float64 Python/numpy values on the caller's side.
"""

from dist_unlearn.solvers.cubic import solve_cubic_eig, solve_tridiagonal_cubic
from dist_unlearn.solvers.cubic_gd import cubic_gradient_descent
from dist_unlearn.solvers.krylov import cubic_subproblem
from dist_unlearn.solvers.lanczos import LanczosProcess, lanczos, lanczos_combine
from dist_unlearn.solvers.newton import damped_newton, pinv_newton
from dist_unlearn.solvers.resolve import KrylovSpace, resolve_cubic
from dist_unlearn.solvers.results import CubicResult, LanczosResult, NewtonResult
from dist_unlearn.solvers.spectrum import extreme_eigenvalues, spectral_density

__all__ = [
    "CubicResult",
    "KrylovSpace",
    "LanczosProcess",
    "LanczosResult",
    "NewtonResult",
    "cubic_gradient_descent",
    "cubic_subproblem",
    "damped_newton",
    "extreme_eigenvalues",
    "lanczos",
    "lanczos_combine",
    "pinv_newton",
    "resolve_cubic",
    "solve_cubic_eig",
    "solve_tridiagonal_cubic",
    "spectral_density",
]
