"""TensorSpace against plain numpy arithmetic, for flat and per-parameter vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dist_unlearn.errors import ConfigError, NumericalError, reject_unknown
from dist_unlearn.linalg import TensorSpace, VectorSpace


def _pair(kind: str):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(7), rng.standard_normal(7)
    if kind == "flat":
        return a, b, torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    split = lambda v: (torch.tensor(v[:3]).reshape(3, 1).float(), torch.tensor(v[3:]).float())  # noqa: E731
    return a, b, split(a), split(b)


@pytest.mark.parametrize("kind", ["flat", "tuple"])
def test_tensor_space_matches_numpy(kind: str) -> None:
    a, b, x, y = _pair(kind)
    space = TensorSpace()
    assert isinstance(space, VectorSpace)
    assert space.dot(x, y) == pytest.approx(float(a @ b), rel=1e-6)
    assert space.norm(x) == pytest.approx(float(np.linalg.norm(a)), rel=1e-6)
    z = space.copy(y)
    space.axpy(2.5, x, z)
    assert space.dot(z, z) == pytest.approx(float((2.5 * a + b) @ (2.5 * a + b)), rel=1e-5)
    assert space.dot(y, y) == pytest.approx(float(b @ b), rel=1e-6), "copy must not alias"
    space.scale(-2.0, z)
    assert space.norm(z) == pytest.approx(2 * float(np.linalg.norm(2.5 * a + b)), rel=1e-5)
    assert space.norm(space.zeros_like(x)) == 0.0
    assert space.is_finite(x)


def test_non_finite_detected() -> None:
    space = TensorSpace()
    x = (torch.ones(3), torch.tensor([1.0, float("nan")]))
    assert not space.is_finite(x)
    with pytest.raises(NumericalError, match="gradient"):
        TensorSpace.check_finite(x, "gradient")


def test_shape_mismatch_rejected() -> None:
    with pytest.raises(ValueError, match="shapes"):
        TensorSpace().dot(torch.ones(3), torch.ones(4))


def test_reject_unknown_suggests_close_key() -> None:
    with pytest.raises(ConfigError, match="'max_stpes'.*Did you mean 'max_steps'"):
        reject_unknown("option", ["max_stpes"], ["max_steps", "tol"])
    reject_unknown("option", ["tol"], ["max_steps", "tol"])


@pytest.mark.parametrize("kind", ["flat", "tuple"])
def test_fast_paths_match_numpy(kind: str) -> None:
    a, b, x, y = _pair(kind)
    space = TensorSpace()
    z = space.lincomb([2.0, -0.5], [x, y])
    assert space.dot(z, z) == pytest.approx(float((2 * a - 0.5 * b) @ (2 * a - 0.5 * b)), rel=1e-5)
    assert space.dots(x, [x, y]) == pytest.approx([float(a @ a), float(a @ b)], rel=1e-6)
    r1, r2 = space.random_like(x, seed=3), space.random_like(x, seed=3)
    assert space.dot(r1, r2) == pytest.approx(space.norm(r1) ** 2) and space.norm(r1) > 0
    rad = space.random_like(x, seed=1, kind="rademacher")
    assert space.norm(rad) == pytest.approx(7**0.5)
