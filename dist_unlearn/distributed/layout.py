"""Whole vectors <-> per-rank shards, for tests and debugging (the solver path never gathers a vector)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def gather_shards(layouts: list[dict[str, Any]], shards: list[np.ndarray]) -> tuple[torch.Tensor, ...]:
    """Rebuild the per-parameter tensors from every rank's shard (rank order)."""
    lay0 = layouts[0]
    if lay0["stage"] != 3:
        flat = np.concatenate(shards)
        out, offs = [], 0
        for shape in lay0["shapes"]:
            k = math.prod(shape)
            out.append(torch.from_numpy(flat[offs : offs + k].reshape(shape).copy()))
            offs += k
        return tuple(out)
    out, offs = [], 0
    for (ps, numel), shape in zip(lay0["parts"], lay0["shapes"], strict=True):
        full = np.concatenate([s[offs : offs + ps] for s in shards])[:numel]
        out.append(torch.from_numpy(full.reshape(shape).copy()))
        offs += ps
    return tuple(out)


def scatter_full(layouts: list[dict[str, Any]], full: Any) -> list[np.ndarray]:
    """Cut a full vector (tuple of per-parameter tensors or a flat tensor) into every rank's shard."""
    parts = [full] if isinstance(full, torch.Tensor) else list(full)
    flat = np.concatenate([p.detach().cpu().float().reshape(-1).numpy() for p in parts])
    shards = []
    for r, lay in enumerate(layouts):
        if lay["stage"] != 3:
            s = np.zeros(lay["chunk"], dtype=np.float32)
            s[: lay["hi"] - lay["lo"]] = flat[lay["lo"] : lay["hi"]]
        else:
            pieces, offs = [], 0
            for ps, numel in lay["parts"]:
                piece = np.zeros(ps, dtype=np.float32)
                seg = flat[offs + r * ps : offs + min((r + 1) * ps, numel)] if r * ps < numel else []
                piece[: len(seg)] = seg
                pieces.append(piece)
                offs += numel
            s = np.concatenate(pieces)
        shards.append(s)
    return shards
