"""Building the model on a worker: under ZeRO-3, partitioned from the start, so no rank holds all of it.

A model given as a path (a ``save_pretrained`` folder, a peft adapter folder, or a folder written by
``save_model`` for a plain module with its ``factory``) is built on each rank inside DeepSpeed's
construction context:

- transformers models: transformers' DeepSpeed integration (a live ``HfDeepSpeedConfig`` during
  ``from_pretrained``) builds the model under ``deepspeed.zero.Init`` (every parameter is partitioned the
  moment it is created) and loads the checkpoint one gathered module at a time, rank 0 copying the weights
  in. A LoRA adapter (``lora=`` or an adapter folder) is added to the partitioned base afterwards; its small
  parameters are partitioned by ``deepspeed.initialize``;
- plain modules: the factory runs under ``deepspeed.zero.Init``, then each parameter is gathered, filled
  from the safetensors file by rank 0 and partitioned again (:func:`load_plain_partitioned`).

Peak memory of a rank while loading is then its partition plus one gathered layer, instead of the whole
model (plus, for a pickled module, the pickle). A live ``nn.Module`` handed to the engine cannot be built
partitioned: the driver already holds it whole, and every rank unpickles the whole of it before
``deepspeed.initialize`` partitions it (a 7B fp32 model: 28 GB per rank for a moment). Pass a folder
(``save_pretrained`` / ``dist_unlearn.models.save_model``) to avoid that.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def build_model(model_blob: Any, spec: dict[str, Any]) -> Any:
    """The rank's model: unpickled from ``model_blob``, else loaded from ``spec["model_path"]`` (under ZeRO-3
    partitioned from the start, module docstring)."""
    if model_blob is not None:
        import cloudpickle

        if int(spec["zero_stage"]) == 3:
            log.info(
                "ZeRO-3 with a live module: each rank unpickles the whole model before DeepSpeed partitions "
                "it; pass a saved model folder to load it partitioned."
            )
        return cloudpickle.loads(model_blob)
    from dist_unlearn.models import load_model

    kwargs = dict(spec.get("model_kwargs", {}))
    if int(spec["zero_stage"]) != 3:
        return load_model(spec["model_path"], **kwargs)
    with partitioned_construction(spec["ds_config"]):
        path = Path(spec["model_path"])
        if kwargs.get("factory") is not None and _is_plain_folder(path):
            import deepspeed

            with deepspeed.zero.Init(config_dict_or_path=spec["ds_config"], mem_efficient_linear=False):
                model = kwargs["factory"]()
            return load_plain_partitioned(model, path)
        return load_model(spec["model_path"], **kwargs)


@contextlib.contextmanager
def partitioned_construction(ds_config: dict[str, Any]):
    """transformers' DeepSpeed integration switched on (``from_pretrained`` builds under ``zero.Init``) for
    the duration, and off again afterwards (a later load, e.g. rank 0 writing the output, is a plain one)."""
    from transformers.integrations import HfDeepSpeedConfig, unset_hf_deepspeed_config

    keep = HfDeepSpeedConfig(ds_config)  # transformers holds only a weak reference: keep it alive here
    try:
        yield keep
    finally:
        unset_hf_deepspeed_config()


def _is_plain_folder(path: Path) -> bool:
    import json

    from dist_unlearn.models.saving import PLAIN_FORMAT

    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("dist_unlearn_format") == PLAIN_FORMAT
    except ValueError:
        return False


def load_plain_partitioned(model: Any, path: Path) -> Any:
    """Fill a ZeRO-3-partitioned plain module from a ``save_model`` folder: parameter by parameter, gathered,
    copied in by rank 0, partitioned again (``deepspeed.zero.GatheredParameters(modifier_rank=0)``);
    buffers (never partitioned) on every rank. Every name of the file must match (strict)."""
    import deepspeed
    import torch.distributed as dist
    from safetensors import safe_open

    from dist_unlearn.errors import ModelError
    from dist_unlearn.models.saving import WEIGHTS_NAME

    rank = dist.get_rank() if dist.is_initialized() else 0
    with safe_open(str(path / WEIGHTS_NAME), framework="pt") as f:
        names = set(f.keys())
        expected = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
        if names != expected:
            raise ModelError(
                f"{str(path)!r} does not match the factory's module: missing {sorted(expected - names)[:5]}, "
                f"unexpected {sorted(names - expected)[:5]}."
            )
        for name, p in model.named_parameters():
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                if rank == 0:
                    p.data.copy_(f.get_tensor(name))
        for name, b in model.named_buffers():
            b.data.copy_(f.get_tensor(name))
    return model
