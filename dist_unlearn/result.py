"""The result type of :func:`dist_unlearn.unlearn`, below both the API and the engines that build it.

``dist_unlearn.api`` (the local engine) and ``dist_unlearn.distributed`` (the Ray engine) both return an
:class:`UnlearnResult`; keeping it here means neither imports the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from dist_unlearn.methods import StepRecord


@dataclass
class UnlearnResult:
    """The unlearned model, one record per step, and summary statistics.

    ``stats`` keys: method, wall_time (s), peak_memory_mb (peak CUDA allocation on GPU, else the peak resident
    set size of the process during the run), peak_memory_source, total_hvps, total_gradients, final_loss and
    final_grad_norm (full retain loss and |gradient| at the returned weights; None without a retain set),
    update_norm (|w_final - w_initial| over the trainable parameters), num_steps, accepted_steps, stop_reason,
    final_M, options, cost (work in example passes by kind, ``dist_unlearn.cost``; the final_loss /
    final_grad_norm diagnostics of first-order methods are not part of it); plus method-specific entries.
    """

    model: nn.Module
    steps: list[StepRecord]
    stats: dict[str, Any] = field(default_factory=dict)
