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
