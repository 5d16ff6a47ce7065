"""Experiment tasks: data + model + training recipe, registered by name.

A task is what a config's ``task:`` section names. It builds its data (``datasets.Dataset`` with ``id`` and
``label`` columns, plus a test split), a freshly initialised model, the loss ``loss_fn(model, batch)``,
trains the
original model and the retrained oracle with the same recipe, and evaluates an unlearned model against the
oracle.

Registered tasks:
- ``digits_cnn``: scikit-learn ``load_digits`` with the small CNN of the CureNewton paper's image setting.
- ``minilm_sentiment``: pretrained all-MiniLM-L6-v2 fine-tuned on the VADER sentiment lexicon (polarity).
- ``tofu_gpt2``: TOFU-style fictitious authors (generated, seeded) and a tiny GPT-2 built from a config
  (``lora`` param for the LoRA variant).
"""

from dist_unlearn.tasks.base import Task, TaskData, available_tasks, get_task, register_task

__all__ = ["Task", "TaskData", "available_tasks", "get_task", "register_task"]
