"""cure_newton's sub-sampled Hessian: how many retain examples its HVPs read, and which ones.

One place for the size rule and the draw, so the in-process oracle and the Ray engine use the same rows for
the same seed (their runs agree, issue 9).
"""

from __future__ import annotations

import math

HVP_SAMPLE_MIN = 2048
HVP_SAMPLE_FRACTION = 0.1


def hvp_sample_size(option: int | str | None, n: int) -> int | None:
    """Examples of cure_newton's sub-sampled Hessian: None (all) or a size < n.

    ``None`` (default): max(HVP_SAMPLE_MIN, HVP_SAMPLE_FRACTION n) = max(2048, 10%) examples, all of them
    when n <= 2048. Measured (benchmarks/RESULTS.md, issue 7): on a 1,350-example MLP case a 512-example
    sample made each HVP 2.6x cheaper but cut ToW after 20 steps from 0.980 to 0.895, hence the floor of
    2048 (sub-sampled Newton keeps a fast local rate with a Hessian sample of a fixed fraction while
    the gradient stays exact; ARC's acceptance test uses full losses, so a poor sample only costs rejected
    steps, never a wrong accepted one). "all": every example.
    """
    if option == "all":
        return None
    size = int(option) if option is not None else max(HVP_SAMPLE_MIN, math.ceil(HVP_SAMPLE_FRACTION * n))
    return size if size < n else None


def fixed_hvp_rows(option: int | str | None, num_rows: int, seed: int) -> list[int] | None:
    """The HVP sample's row ids (sorted), drawn as ``LocalOracle.resample`` draws them; None = all."""
    import torch

    size = hvp_sample_size(option, num_rows)
    if size is None:
        return None
    gen = torch.Generator().manual_seed(int(seed))
    return sorted(torch.randperm(num_rows, generator=gen)[:size].tolist())


def draw_samples(
    n: int, grad_size: int | None, hvp_size: int | None, seed: int
) -> tuple[list[int] | None, list[int] | None]:
    """The stochastic variant's (gradient rows, HVP rows) for a seed, sorted (None: all rows): one generator
    seeded with ``seed`` draws the gradient sample, then the HVP sample. The in-process oracle and the
    engine draw with this, so their runs read the same rows."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))

    def draw(size: int | None) -> list[int] | None:
        if size is None or size >= n:
            return None
        return sorted(torch.randperm(n, generator=gen)[:size].tolist())

    return draw(grad_size), draw(hvp_size)
