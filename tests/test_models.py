"""Model loading, LoRA, losses, tokenizer checks and atomic saving."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from dist_unlearn.errors import ConfigError, ModelError, OutputError
from dist_unlearn.models import (
    CausalLMLoss,
    ClassificationLoss,
    apply_lora,
    check_tokenizer,
    default_loss_fn,
    load_model,
    save_model,
)

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)
V = 100


def tiny_bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=V,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=3,
    )
    return transformers.BertForSequenceClassification(cfg).eval()


def tiny_gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        bos_token_id=1, eos_token_id=1, vocab_size=V, n_embd=16, n_layer=1, n_head=2, n_positions=32
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def ids(n=4, t=6, seed=0):
    return torch.randint(1, V, (n, t), generator=torch.Generator().manual_seed(seed))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 5), nn.Linear(5, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def listing(folder):
    return sorted(os.listdir(folder))


def test_losses_match_hf_and_keep_the_model_dtype():
    bert = tiny_bert()
    batch = {
        "input_ids": ids(),
        "attention_mask": torch.ones(4, 6, dtype=torch.long),
        "labels": torch.tensor([0, 2, 1, 1]),
    }
    assert isinstance(default_loss_fn(bert), ClassificationLoss)
    hf = bert(**batch).loss
    assert torch.allclose(ClassificationLoss()(bert, batch), hf, rtol=1e-6)
    gpt = tiny_gpt2()
    lm = {"input_ids": ids(), "attention_mask": torch.ones(4, 6, dtype=torch.long)}
    assert isinstance(default_loss_fn(gpt), CausalLMLoss)
    # equal token counts per example: the per-example mean equals HF's token mean
    assert torch.allclose(CausalLMLoss()(gpt, lm), gpt(**lm, labels=lm["input_ids"]).loss, rtol=1e-6)
    gpt64 = gpt.double()
    assert CausalLMLoss()(gpt64, lm).dtype == torch.float64
    # padding is ignored: the padded tail of row 0 does not change the loss
    masked = {"input_ids": lm["input_ids"].clone(), "attention_mask": lm["attention_mask"].clone()}
    masked["attention_mask"][0, 4:] = 0
    changed = {k: v.clone() for k, v in masked.items()}
    changed["input_ids"][0, 4:] = 7
    assert torch.allclose(CausalLMLoss()(gpt64, masked), CausalLMLoss()(gpt64, changed), rtol=1e-12)
    with pytest.raises(ModelError, match="Net.*pass loss_fn"):
        default_loss_fn(Net())


def test_plain_module_loss_and_tuple_batches():
    net = Net()
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    ref = nn.functional.cross_entropy(net(x), y)
    assert torch.allclose(ClassificationLoss()(net, (x, y)), ref)
    assert torch.allclose(ClassificationLoss()(net, {"input": x, "label": y}), ref)


def test_save_and_load_hf_folder_roundtrip(tmp_path):
    bert = tiny_bert()
    out = save_model(bert, tmp_path / "bert")
    assert "model.safetensors" in listing(out) and "config.json" in listing(out)
    assert not [n for n in listing(tmp_path) if n.startswith(".")]
    loaded = load_model(out, task="classification").eval()
    x = ids()
    assert torch.allclose(loaded(input_ids=x).logits, bert(input_ids=x).logits)
    as64 = load_model(str(out), task="classification", dtype="float64")
    assert next(as64.parameters()).dtype == torch.float64


def test_load_errors(tmp_path):
    with pytest.raises(ModelError, match="nowhere.*does not exist"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="'clasification'.*Did you mean 'classification'"):
        load_model(Net(), task="clasification")
    with pytest.raises(ConfigError, match="'float33'"):
        load_model(Net(), dtype="float33")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="empty"):
        load_model(empty)


def test_plain_module_save_load_with_factory(tmp_path):
    net = Net()
    out = save_model(net, tmp_path / "net")
    assert listing(out) == ["config.json", "model.safetensors"]
    loaded = load_model(out, factory=Net)
    x = torch.randn(2, 3)
    assert torch.equal(loaded(x), net(x))
    with pytest.raises(ModelError, match="factory="):
        load_model(out)
    assert isinstance(load_model(Net), Net)  # a factory as the model


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    bert = tiny_bert()
    dest = tmp_path / "model"

    def broken(folder, *a, **k):
        with open(os.path.join(folder, "model.safetensors"), "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(bert, "save_pretrained", broken)
    with pytest.raises(OutputError, match="disk full.*unchanged"):
        save_model(bert, dest)
    assert listing(tmp_path) == []  # no destination, no temporary folder
    # an earlier save survives a failed overwrite unchanged
    monkeypatch.undo()
    save_model(bert, dest)
    before = {n: (dest / n).read_bytes() for n in listing(dest)}
    monkeypatch.setattr(bert, "save_pretrained", broken)
    with pytest.raises(OutputError):
        save_model(bert, dest)
    assert {n: (dest / n).read_bytes() for n in listing(dest)} == before
    assert listing(tmp_path) == ["model"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        save_model(bert, tmp_path / "file")


def test_lora_only_adapters_trainable_and_adapter_roundtrip(tmp_path):
    base_dir = save_model(tiny_gpt2(), tmp_path / "base")
    model = load_model(base_dir, task="causal_lm", lora={"r": 2, "alpha": 4})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.fill_(0.05)
    x = ids()
    out = save_model(model, tmp_path / "adapter")
    assert "adapter_config.json" in listing(out)
    again = load_model(out, task="causal_lm").eval()
    assert torch.allclose(again(input_ids=x).logits, model.eval()(input_ids=x).logits, atol=1e-6)
    assert all("lora_" in n for n, p in again.named_parameters() if p.requires_grad)
    plain = apply_lora(Net(), r=1)
    assert {n for n, p in plain.named_parameters() if p.requires_grad} and all(
        "lora_" in n for n, p in plain.named_parameters() if p.requires_grad
    )
    with pytest.raises(ConfigError, match="r=0"):
        apply_lora(Net(), r=0)
    with pytest.raises(ModelError, match="nothere"):
        apply_lora(Net(), target_modules=["nothere"])
    with pytest.raises(ConfigError, match="'alpah'.*Did you mean 'alpha'"):
        load_model(Net(), lora={"r": 2, "alpah": 4})


def _tokenizer(n_tokens):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"w{i}": i + 2 for i in range(n_tokens - 2)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def test_tokenizer_model_mismatch():
    check_tokenizer(tiny_gpt2(), _tokenizer(V))  # matching: no error
    check_tokenizer(tiny_gpt2(), _tokenizer(60))  # smaller vocab than embedding rows is fine
    with pytest.raises(ModelError, match="150 tokens.*100 rows"):
        check_tokenizer(tiny_gpt2(), _tokenizer(150))
    with pytest.raises(ModelError, match="no input embedding"):
        check_tokenizer(Net(), _tokenizer(10))
