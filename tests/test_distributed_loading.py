"""Under ZeRO-3 the workers build a model given as a path partitioned from the start (distributed/loading.py):
a save_pretrained folder, a peft adapter folder on it, a plain module saved with save_model (its factory run
under deepspeed.zero.Init). Reference: the same folder loaded in-process; loss and gradient must match bit
for bit (the engine computes what the in-process oracle computes). A pickled module is unpickled whole."""

from __future__ import annotations

import sys

import cloudpickle
import pytest
import torch
from torch.utils.data import TensorDataset

ray = pytest.importorskip("ray")
pytest.importorskip("deepspeed")
pytest.importorskip("transformers")

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def ce(model, batch):
    return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])


def plain_factory():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    from dist_unlearn.models import save_model
    from dist_unlearn.models.lora import apply_lora

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16, bos_token_id=63,
                     eos_token_id=63, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    GPT2LMHeadModel(cfg).save_pretrained(root / "gpt2")
    lora = apply_lora(GPT2LMHeadModel.from_pretrained(root / "gpt2"), r=2, alpha=4)
    with torch.no_grad():  # a trained adapter: B not zero
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.1)
    lora.save_pretrained(root / "adapter")
    save_model(plain_factory(), root / "plain")
    return root


def _same_as_in_process(path, model_kwargs, loss_fn, data, partitioned: bool) -> None:
    from dist_unlearn.curvature import LocalOracle
    from dist_unlearn.distributed import build_group
    from dist_unlearn.models import load_model

    group, oracle = build_group(2, path, loss_fn, data, zero_stage=3, hvp="fd", model_kwargs=model_kwargs)
    try:
        assert [info["partitioned_at_load"] for info in group.setup_info] == [partitioned, partitioned]
        loss, g = oracle.loss_and_gradient()
        ref = LocalOracle(load_model(path, **model_kwargs) if isinstance(path, str) else path, loss_fn, data,
                          hvp="fd")  # fmt: skip
        loss_ref, g_ref = ref.loss_and_gradient()
        assert loss == loss_ref
        assert all(torch.equal(a, b) for a, b in zip(oracle.space.gather(g), g_ref, strict=True))
    finally:
        group.shutdown()


@pytest.mark.slow
def test_gpt2_folder_and_adapter_load_partitioned(ray_local, folders):
    from dist_unlearn.bench.models import ColumnRows, lm_loss

    data = ColumnRows(input_ids=torch.randint(0, 63, (8, 16), generator=torch.Generator().manual_seed(0)))
    _same_as_in_process(str(folders / "gpt2"), {"task": "causal_lm"}, lm_loss, data, partitioned=True)
    adapter = {"task": "causal_lm", "base_model": str(folders / "gpt2")}
    _same_as_in_process(str(folders / "adapter"), adapter, lm_loss, data, partitioned=False)  # + LoRA params


def _rows():
    g = torch.Generator().manual_seed(2)
    return TensorDataset(torch.randn(20, 5, generator=g), torch.randint(0, 3, (20,), generator=g))


def test_plain_module_folder_loads_partitioned(ray_local, folders):
    _same_as_in_process(str(folders / "plain"), {"factory": plain_factory}, ce, _rows(), partitioned=True)


@pytest.mark.slow
def test_pickled_module_is_unpickled_whole(ray_local):
    _same_as_in_process(plain_factory(), {}, ce, _rows(), partitioned=False)
