"""The DeepSpeed config and HVP kind the workers run with (checked on the driver before any actor starts)."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

from dist_unlearn.errors import ConfigError

log = logging.getLogger("dist_unlearn.distributed.engine")


def make_ds_config(zero_stage: int = 0, deepspeed_config: dict | str | None = None) -> dict[str, Any]:
    """The DeepSpeed config the workers use: the user's (dict or JSON file) with what the engine needs.

    ZeRO-3 forces ``stage3_param_persistence_threshold: 0`` so every parameter is partitioned and the
    finite-difference HVP can perturb it through its shard.

    Raises:
        ConfigError: unreadable JSON file, or a ZeRO stage in the file that contradicts ``zero_stage``.
    """
    if isinstance(deepspeed_config, str | Path):
        try:
            cfg = json.loads(Path(deepspeed_config).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"deepspeed_config={str(deepspeed_config)!r} is not a readable JSON file: {e}"
            ) from e
    else:
        cfg = copy.deepcopy(dict(deepspeed_config or {}))
    zero = dict(cfg.get("zero_optimization") or {})
    file_stage = zero.get("stage")
    stage = int(zero_stage or 0)
    if file_stage is not None and stage == 0:
        stage = int(file_stage)
    elif file_stage is not None and int(file_stage) != stage:
        raise ConfigError(
            f"zero_stage={zero_stage} but deepspeed_config sets zero_optimization.stage={file_stage}; "
            "give one of them (or the same value)."
        )
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"ZeRO stage {stage} is not one of 0, 1, 2, 3.")
    zero["stage"] = stage
    if stage == 3:
        zero["stage3_param_persistence_threshold"] = 0
    cfg["zero_optimization"] = zero
    cfg.setdefault("train_micro_batch_size_per_gpu", 1)
    cfg.setdefault("gradient_accumulation_steps", 1)
    cfg["zero_allow_untested_optimizer"] = True
    cfg.setdefault("steps_per_print", 1 << 30)
    return cfg


ZERO3_BUFFER_KEYS = (
    "reduce_bucket_size",
    "stage3_prefetch_bucket_size",
    "stage3_max_live_parameters",
    "stage3_max_reuse_distance",
)
"""The ZeRO-3 settings that bound DeepSpeed's full-size (unsharded) transient buffers on every rank."""

ZERO3_BUFFER_FRACTION = 8
"""Each buffer of :data:`ZERO3_BUFFER_KEYS` holds at most 1/8 of the model's parameters (above the floor)."""

ZERO3_BUFFER_FLOOR = 5_000_000
"""... and at least this many elements (20 MB in fp32): small models keep one bucket, one gather per pass."""


def with_zero3_buffers(cfg: dict[str, Any], num_params: int) -> dict[str, Any]:
    """``cfg`` with the ZeRO-3 buffer sizes scaled to the model (keys the user set are kept).

    DeepSpeed's defaults (``reduce_bucket_size`` 5e8, ``stage3_prefetch_bucket_size`` 5e7,
    ``stage3_max_live_parameters`` and ``stage3_max_reuse_distance`` 1e9 elements) exceed a GPT-2-124M, so
    every rank would hold the whole gathered model at the end of each forward pass (reuse distance, live
    parameters) and the whole unreduced gradient before its reduce-scatter (the gradient bucket): memory
    that does not shrink with the number of ranks. Here each is ``max(floor, ceil(n / 8))`` elements:
    for a model below 40M parameters nothing changes (one bucket, everything gathered once per pass, the
    fewest collectives); above it the full-size part of a rank's memory stays ~1/8 of the model per buffer.
    Stages other than 3 are returned unchanged.
    """
    zero = dict(cfg.get("zero_optimization") or {})
    if int(zero.get("stage", 0) or 0) != 3:
        return cfg
    size = max(ZERO3_BUFFER_FLOOR, -(-int(num_params) // ZERO3_BUFFER_FRACTION))
    for key in ZERO3_BUFFER_KEYS:
        if key not in zero and key.removeprefix("stage3_") not in zero:  # DeepSpeed accepts both names
            zero[key] = size
    return {**cfg, "zero_optimization": zero}


def hvp_mode(hvp: str, zero_stage: int) -> str:
    """The HVP the workers compute: exact (double backward) under ZeRO 0-2 when asked, FD otherwise.

    ZeRO-3 releases parameters between layers, so double backward is impossible there: ``exact`` falls back
    to the finite-difference product on the shards (logged). GGN is not implemented on the workers.
    """
    if hvp not in ("exact", "fd", "ggn"):
        raise ConfigError(f"hvp={hvp!r}; allowed: 'exact', 'fd' ('ggn' only without workers).")
    if hvp == "ggn":
        raise ConfigError("hvp='ggn' is not available with workers=N; use hvp='exact' (ZeRO 0-2) or 'fd'.")
    if zero_stage == 3 and hvp == "exact":
        log.warning("ZeRO-3 partitions parameters: using the finite-difference HVP on the shards (hvp='fd').")
        return "fd"
    return hvp
