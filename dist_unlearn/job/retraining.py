"""What the unlearning cost against retraining: ``x%`` of retraining's example passes.

Retraining without the forget rows repeats the fine-tune on the retained rows. The job states what the
fine-tune cost in ``training:`` (:class:`~dist_unlearn.job.audit_config.TrainingSection`):

    retraining = epochs x retained rows            (training: {epochs: E})
    retraining = P x retained rows / training rows (training: {example_passes: P}, the same recipe on fewer
                                                    rows)

Without it the cost is given in epochs of the training set (``passes / training rows``): one epoch is one
example pass per training row, the unit a reader can compare with their own fine-tune.
"""

from __future__ import annotations

from typing import Any


def cost_against_retraining(
    cost: dict[str, Any] | None, training: Any, n_train: int, n_retain: int
) -> dict[str, Any] | None:
    """The unlearning cost as a share of retraining (module docstring); None without a cost record.

    Returns:
        ``{"example_passes", "epochs_of_training_set", "retraining_passes", "percent_of_retraining",
        "basis", "sentence"}`` (the retraining keys None without ``training``).
    """
    if not cost or cost.get("example_passes") is None:
        return None
    passes = float(cost["example_passes"])
    out: dict[str, Any] = {
        "example_passes": passes,
        "epochs_of_training_set": passes / n_train if n_train else None,
        "retraining_passes": None,
        "percent_of_retraining": None,
        "basis": None,
    }
    if training is not None and training.epochs is not None:
        out["retraining_passes"] = training.epochs * n_retain
        out["basis"] = f"training.epochs {training.epochs:g} x {n_retain} retained rows"
    elif training is not None:
        out["retraining_passes"] = training.example_passes * n_retain / n_train
        out["basis"] = (
            f"training.example_passes {training.example_passes:g} x {n_retain} retained / {n_train} "
            "training rows"
        )
    if out["retraining_passes"]:
        out["percent_of_retraining"] = 100.0 * passes / out["retraining_passes"]
        out["sentence"] = (
            f"{passes:.0f} example passes = {out['percent_of_retraining']:.1f}% of retraining's "
            f"{out['retraining_passes']:.0f} ({out['basis']})"
        )
    else:
        out["sentence"] = (
            f"{passes:.0f} example passes = {out['epochs_of_training_set']:.2f} epochs of the {n_train} "
            "training rows (state training: {epochs: E} in the job to compare with retraining)"
        )
    return out
