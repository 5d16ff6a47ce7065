"""Forget specifications, retain/forget splits and loaders.

A forget set is named by a :class:`ForgetSpec` (explicit ids, a label/class, a random fraction with a seed,
or a
file of ids) and resolved against a dataset by :func:`split_forget`, which validates it and returns the
retain and
forget parts as ``datasets.Dataset``. :func:`as_dataset` and :func:`make_loader` accept torch ``Dataset`` /
``DataLoader`` / ``datasets.Dataset`` alike.
"""

from dist_unlearn.data.convert import as_dataset, make_loader, pad_collate
from dist_unlearn.data.spec import ForgetSpec
from dist_unlearn.data.split import RetainForget, split_forget

__all__ = ["ForgetSpec", "RetainForget", "split_forget", "as_dataset", "make_loader", "pad_collate"]
