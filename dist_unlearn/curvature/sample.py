"""cure_newton's retain samples: how many retained rows its work reads, and which ones.

Unlearning is worth doing only when it costs less than retraining, so its cost must be set by the forget set
(the request), not by the training set. Every quantity cure_newton computes on the retained rows -- the
gradient, loss and Hessian-vector products of the retain term, the ARC trial losses, the first-M tries, the
final loss and gradient -- is therefore taken on a *fixed-size* random sample of the retain set
(``retain_sample`` rows; :data:`RETAIN_SAMPLE` by default), its HVPs on the same rows unless ``hvp_sample``
asks for a smaller sample nested in them. Work on the forget set (and the stop rule's calibration rows)
always reads all of them: that is the request. The HVPs default to the gradient's rows because ARC judges
a step by the loss on those rows: a model built from other rows predicts another function (measured on the
demo).

**Drawn once per run, not per outer step.** The samples are one seeded permutation of the retain rows: the
gradient sample is its first ``retain_sample`` rows, the HVP sample its first ``hvp_sample`` rows (so the HVP
rows are among the gradient rows). They stay fixed for the whole run, which makes the sampled objective one
fixed function: ARC's acceptance test compares L(w_k) and L(w_k + d_k) on the same rows, a step rejected at
w_k is re-solved on the same Krylov space, the Hessian kept for later steps (curvature reuse) changes only
through w, and the relative stop rules compare like with like. The stochastic variant
(``cure_newton_stochastic``, the paper's) redraws both samples every step instead.

**Same rows in every engine.** The draw depends only on (number of retain rows, seed), so the in-process
oracle and the Ray engine (each rank reads its micro-batches of the same sorted row list) use the
same rows for the same seed, and their runs agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RETAIN_SAMPLE = {"retain": 2048, "forgetting": 64}
"""Default rows of the retain sample by the role of the retain term (benchmarks/RESULTS.md,
"Does the cost grow with the training set?").

- objective ``"retain"``: the retain loss *is* the objective and its minimiser the answer (the model
  retrained without the forget set), so the sample's Hessian sets how close the steps get: 2048 rows.
- forgetting objectives (``"npo"``, ``"grad_diff"``): the forget term drives the steps and the stop rule
  ends them; the retain term only holds the retained rows in place: 64 rows.
"""


def default_retain_sample(objective: str) -> int:
    """:data:`RETAIN_SAMPLE` for an objective."""
    return RETAIN_SAMPLE["retain" if objective == "retain" else "forgetting"]


def sample_size(option: int | str | None, n: int, default: int) -> int | None:
    """Rows of a sample of ``n`` retain rows: None (all of them) or a size < n.

    Args:
        option: the user's value -- None (``default`` rows), "all" (every row) or a positive integer.
        n: number of retain rows.
        default: the size used when ``option`` is None.
    """
    if option == "all":
        return None
    size = int(option) if option is not None else int(default)
    return size if size < n else None


@dataclass(frozen=True)
class RetainSample:
    """The row ids (sorted) of a run's two retain samples; None means every row.

    Attributes:
        grad_rows: rows of the retain term's gradient and loss (trial losses, first-M tries, final stats).
        hvp_rows: rows of the retain term's Hessian-vector products.
        num_rows: rows of the retain set they were drawn from.
    """

    grad_rows: list[int] | None
    hvp_rows: list[int] | None
    num_rows: int

    def size(self, which: str) -> int:
        """Rows read by the ``"grad"`` or ``"hvp"`` sample."""
        rows = self.grad_rows if which == "grad" else self.hvp_rows
        return self.num_rows if rows is None else len(rows)


def draw_retain_sample(
    retain_option: int | str | None,
    hvp_option: int | str | None,
    num_rows: int,
    seed: int,
    objective: str = "retain",
) -> RetainSample:
    """Draw the nested samples of the module docstring: prefixes of one seeded permutation of the rows.

    Args:
        retain_option: ``retain_sample`` (None: :func:`default_retain_sample`; "all": every row).
        hvp_option: ``hvp_sample`` (None: the gradient sample's rows; "all": every row).
        num_rows: rows of the retain set.
        seed: the run's seed.
        objective: the run's objective (sets the default size).
    """
    import torch

    grad = sample_size(retain_option, num_rows, default_retain_sample(objective))
    hvp = grad if hvp_option is None else sample_size(hvp_option, num_rows, num_rows)
    if grad is None and hvp is None:
        return RetainSample(None, None, num_rows)
    perm = torch.randperm(num_rows, generator=torch.Generator().manual_seed(int(seed))).tolist()

    def prefix(size: int | None) -> list[int] | None:
        return None if size is None else sorted(perm[:size])

    return RetainSample(prefix(grad), prefix(hvp), num_rows)


def fixed_hvp_rows(option: int | str | None, num_rows: int, seed: int) -> list[int] | None:
    """The HVP sample's row ids (sorted) as :func:`draw_retain_sample` draws them for the retain objective
    (the method fixes both samples itself at its start, see ``cure_newton``); None = all."""
    return draw_retain_sample(None, option, num_rows, seed).hvp_rows


def subset_rows(data: Any, rows: list[int] | None) -> Any:
    """The rows ``rows`` of a map-style data set (``datasets.Dataset.select`` or a torch ``Subset``); the
    data set itself when ``rows`` is None."""
    if rows is None:
        return data
    select = getattr(data, "select", None)
    if callable(select) and hasattr(data, "column_names"):
        return select(rows)
    from torch.utils.data import Subset

    return Subset(data, rows)


def resolve_gradient(
    gradient: str | None, objective: str, retain_sample: int | str | None, num_rows: int, has_forget: bool
) -> str:
    """The ``gradient`` option in force: the given one, else "influence" for the retain objective on a
    sample smaller than the retain set (with a forget set to anchor it), else "full".

    On a sample, the retain objective's gradient is a small difference of large per-row gradients, which a
    few thousand rows estimate poorly; anchored at the stationary-point identity
    (:class:`~dist_unlearn.curvature.objective.InfluenceFirstGradient`) the sample only has to estimate the
    change of the gradient since the weights as given.
    """
    if gradient is not None:
        return gradient
    sampled = sample_size(retain_sample, num_rows, default_retain_sample(objective)) is not None
    return "influence" if objective == "retain" and sampled and has_forget else "full"


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
