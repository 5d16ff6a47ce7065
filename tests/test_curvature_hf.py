"""LocalOracle on tiny transformers models (BERT classifier, GPT-2 LM, LoRA) against float64 references.

The reference HVP is a float64 central difference of gradients computed here with torch.func (only first
derivatives, so independent of double backward); the reference Gauss-Newton product uses an explicit Jacobian.
"""

from __future__ import annotations

import pytest
import torch

from dist_unlearn.curvature import LocalOracle, ensure_double_backward_attention, exact_hvp_batch
from dist_unlearn.models import CausalLMLoss, ClassificationLoss, apply_lora

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)
N, T, V = 6, 7, 100


def tiny_bert(attn="sdpa"):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=V,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=3,
        attn_implementation=attn,
    )
    return transformers.BertForSequenceClassification(cfg).double()


def tiny_gpt2(attn="sdpa"):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        bos_token_id=1,
        eos_token_id=1,
        vocab_size=V,
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_positions=32,
        attn_implementation=attn,
    )
    return transformers.GPT2LMHeadModel(cfg).double()


def token_rows(with_labels: bool):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(
        1, V, (N, T), generator=g
    )  # id 0 is BERT's padding_idx: its embedding row gets no gradient
    mask = torch.ones(N, T, dtype=torch.long)
    mask[1, 5:] = 0
    mask[4, 3:] = 0
    rows = [{"input_ids": ids[i], "attention_mask": mask[i]} for i in range(N)]
    if with_labels:
        labels = torch.randint(0, 3, (N,), generator=g)
        for i in range(N):
            rows[i]["labels"] = labels[i]
    return rows


def full_batch(rows):
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def named_trainable(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def ref_grad(model, loss_fn, batch, params):
    names = list(params)

    def f(*ws):
        return loss_fn.from_outputs(
            torch.func.functional_call(
                model,
                dict(zip(names, ws, strict=True)),
                args=(),
                kwargs={k: v for k, v in batch.items() if k != "labels"},
            ).logits,
            batch,
        )

    ws = [p.detach() for p in params.values()]
    return torch.func.grad(f, argnums=tuple(range(len(ws))))(*ws), ws, f


def ref_hvp_fd(model, loss_fn, batch, v):
    params = named_trainable(model)
    _, ws, f = ref_grad(model, loss_fn, batch, params)
    vn = float(torch.sqrt(sum((t * t).sum() for t in v)))
    h = 1e-4 / vn
    gfun = torch.func.grad(f, argnums=tuple(range(len(ws))))
    gp = gfun(*[w + h * t for w, t in zip(ws, v, strict=True)])
    gm = gfun(*[w - h * t for w, t in zip(ws, v, strict=True)])
    return torch.cat([((a - b) / (2 * h)).reshape(-1) for a, b in zip(gp, gm, strict=True)])


def rand_vec(params, seed=9):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params)


def flat(vec):
    return torch.cat([t.reshape(-1) for t in vec])


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_bert_exact_hvp_switches_attention_and_matches_float64_reference():
    model = tiny_bert("sdpa")
    assert model.config._attn_implementation == "sdpa"
    rows = token_rows(with_labels=True)
    oracle = LocalOracle(model, None, rows, batch_size=4)  # default loss for a classifier, partial last chunk
    assert model.config._attn_implementation == "eager" and oracle.attn_implementation == "sdpa"
    assert not model.training
    v = rand_vec(oracle.params)
    hv = flat(oracle.hvp(v))
    ref = ref_hvp_fd(model, ClassificationLoss(), full_batch(rows), v)
    assert rel(hv, ref) < 1e-6


def test_bert_ggn_matches_explicit_jacobian_reference():
    model = tiny_bert("eager")
    rows = token_rows(with_labels=True)
    batch = full_batch(rows)
    oracle = LocalOracle(model, ClassificationLoss(), rows, hvp="ggn", batch_size=4)
    v = rand_vec(oracle.params)
    gv = flat(oracle.hvp(v))
    params = list(named_trainable(model).values())
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    rows_j = []
    for i in range(N):
        for c in range(3):
            gi = torch.autograd.grad(logits[i, c], params, retain_graph=True, allow_unused=True)
            rows_j.append(
                torch.cat(
                    [
                        (torch.zeros_like(p) if g is None else g).reshape(-1)
                        for g, p in zip(gi, params, strict=True)
                    ]
                )
            )
    J = torch.stack(rows_j).view(N, 3, -1)
    p = torch.softmax(logits.detach(), -1)
    fv = flat(v)
    ref = sum(J[i].T @ ((torch.diag(p[i]) - torch.outer(p[i], p[i])) @ (J[i] @ fv)) for i in range(N)) / N
    assert rel(gv, ref) < 1e-10


@pytest.mark.parametrize("mode", ["exact", "fd"])
def test_gpt2_hvp_matches_float64_reference(mode):
    model = tiny_gpt2("sdpa")
    rows = token_rows(with_labels=False)
    oracle = LocalOracle(model, None, rows, hvp=mode, batch_size=4)
    assert isinstance(oracle.loss_fn, CausalLMLoss)
    v = rand_vec(oracle.params)
    hv = flat(oracle.hvp(v))
    assert hv.dtype == torch.float64
    ref = ref_hvp_fd(model, CausalLMLoss(), full_batch(rows), v)
    assert rel(hv, ref) < (1e-6 if mode == "exact" else 1e-5)
    # the loss is ours, in float64 (HF's built-in loss would upcast logits to float32 only)
    g_ref, _, _ = ref_grad(model, CausalLMLoss(), full_batch(rows), named_trainable(model))
    assert rel(flat(oracle.gradient()), flat(g_ref)) < 1e-12


def test_lora_oracle_sees_only_adapters_and_matches_reference():
    model = apply_lora(tiny_gpt2("eager"), r=2, alpha=4)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    rows = token_rows(with_labels=False)
    oracle = LocalOracle(model, CausalLMLoss(), rows, batch_size=4)
    assert oracle.parameter_names and all("lora_" in n for n in oracle.parameter_names)
    n_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert sum(p.numel() for p in oracle.params) == n_lora < sum(p.numel() for p in model.parameters()) // 10
    v = rand_vec(oracle.params)
    ref = ref_hvp_fd(model, CausalLMLoss(), full_batch(rows), v)
    assert rel(flat(oracle.hvp(v)), ref) < 1e-6


def test_cpu_sdpa_has_no_double_backward_until_switched_to_eager():
    model = tiny_gpt2("sdpa").eval()
    batch = full_batch(token_rows(with_labels=False))
    params = list(model.parameters())
    v = rand_vec(params)
    with pytest.raises(RuntimeError, match="not implemented"):
        exact_hvp_batch(CausalLMLoss(), model, batch, params, v)
    assert ensure_double_backward_attention(model) == "sdpa"
    assert model.config._attn_implementation == "eager"
    _, hv = exact_hvp_batch(CausalLMLoss(), model, batch, params, v)
    assert torch.isfinite(flat(hv)).all()


def test_gpt2_ggn_is_symmetric_positive_semidefinite():
    model = tiny_gpt2("sdpa")
    oracle = LocalOracle(model, CausalLMLoss(), token_rows(with_labels=False), hvp="ggn", batch_size=4)
    u, v = rand_vec(oracle.params, 1), rand_vec(oracle.params, 2)
    gu, gv = oracle.hvp(u), oracle.hvp(v)
    s = oracle.space
    assert abs(s.dot(u, gv) - s.dot(v, gu)) < 1e-10 * abs(s.dot(u, gv))
    assert s.dot(u, gu) > 0 and s.dot(v, gv) > 0
    hv = oracle.hvp(v)
    exact = LocalOracle(model, CausalLMLoss(), token_rows(with_labels=False)).hvp(v)
    assert rel(flat(hv), flat(exact)) > 1e-3  # the Gauss-Newton matrix is not the Hessian


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sdpa_model_exact_hvp_matches_fd_in_float32():
    model = tiny_gpt2("sdpa").float().cuda()
    rows = token_rows(with_labels=False)
    exact = LocalOracle(model, CausalLMLoss(), rows, batch_size=4)
    fd = LocalOracle(model, CausalLMLoss(), rows, hvp="fd", batch_size=4)
    v = tuple(t.cuda() for t in rand_vec([p.float() for p in exact.params]))
    assert rel(flat(exact.hvp(v)), flat(fd.hvp(v))) < 1e-2
