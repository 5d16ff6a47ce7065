"""How large should the finite-difference step of a float32 HVP be? The error curve behind the FD rule.

For a model in float32, the central difference

    H v ~= (g(w + eps v) - g(w - eps v)) / (2 eps)

is compared with the exact H v of the same model in float64 (double backward, full batch). The error
relative to |H v| is measured over a range of perturbation sizes h = eps |v| (the distance the weights
move) for several unit directions v, on two models built from code:

- ``mlp``: a 20-64-5 tanh classifier trained to near-zero loss on 240 rows of synthetic tabular data (the
  engine's class-level test case);
- ``gpt2``: a GPT-2 built from a config (2 layers, 64 wide, 4 heads, 512-token vocabulary), HF init, 40 Adam
  steps on 32 rows of 32 random tokens.

Directions: the gradient, a random Gaussian vector, the 4th Lanczos vector from the gradient (what the
solver applies H to), and random vectors living on one tensor only (concentrated directions: the
embedding / output layer, a LayerNorm or bias vector). The rules of :mod:`dist_unlearn.curvature.hvp_fd`
(and the older ones) are marked on the curve at the h they choose.

Usage::

    python benchmarks/fd_error_curve.py --out benchmarks/results/fd_error_curve.json

Writes the JSON and a PNG next to it (one panel per model, one line per direction).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dist_unlearn.curvature.hvp_fd import fd_hvp  # noqa: E402

U32 = float(torch.finfo(torch.float32).eps)


def mlp_case(seed: int = 0, steps: int = 300):
    """A 64-wide MLP trained on a small tabular set (300 steps: near-zero loss): (model, loss_fn, batch)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    centers = 1.2 * torch.randn(5, 20, generator=g)
    y = torch.randint(0, 5, (240,), generator=g)
    x = centers[y] + torch.randn(240, 20, generator=g)
    model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 5))

    def loss_fn(m, batch):
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model, (x, y)).backward()
        opt.step()
    return model.eval(), loss_fn, (x, y)


def gpt2_case(seed: int = 0, n_layer: int = 2, n_embd: int = 64, steps: int = 40):
    """A GPT-2 from a config, briefly trained on random tokens: (model, loss_fn, batch)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=4, vocab_size=512, n_positions=64)
    cfg.bos_token_id = cfg.eos_token_id = cfg.vocab_size - 1
    cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0.0
    cfg._attn_implementation = "eager"  # double backward for the float64 reference
    model = GPT2LMHeadModel(cfg)
    ids = torch.randint(0, cfg.vocab_size, (32, 32), generator=torch.Generator().manual_seed(seed))

    def loss_fn(m, batch):
        logits = m(input_ids=batch).logits[:, :-1]
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model, ids).backward()
        opt.step()
    return model.eval(), loss_fn, ids


CASES = {
    "mlp (zero loss)": mlp_case,
    "mlp (20 steps)": lambda: mlp_case(steps=20),
    "gpt2 2x64": gpt2_case,
    "gpt2 4x128 (200 steps)": lambda: gpt2_case(n_layer=4, n_embd=128, steps=200),
}
"""The models of the curve: the first and third chose the rule's constant, the other two check it."""


def _float64(model, batch):
    """(float64 copy of ``model``, its trainable parameters, ``batch`` with floating tensors in float64)."""
    m64 = copy.deepcopy(model).double()
    params = [p for p in m64.parameters() if p.requires_grad]
    if isinstance(batch, tuple):
        batch = tuple(t.double() if t.is_floating_point() else t for t in batch)
    return m64, params, batch


def exact_hvp64(model, loss_fn, batch, v):
    """H v of the float64 copy of ``model`` by double backward (v: per-parameter tensors)."""
    m64, params, b64 = _float64(model, batch)
    loss = loss_fn(m64, b64)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    gv = sum((g * x.double()).sum() for g, x in zip(grads, v, strict=True))
    return [h.detach() for h in torch.autograd.grad(gv, params)]


def gradient64(model, loss_fn, batch):
    m64, params, b64 = _float64(model, batch)
    return [g.detach() for g in torch.autograd.grad(loss_fn(m64, b64), params)]


def _norm(v) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in v))


def _unit(v):
    n = _norm(v)
    return [t / n for t in v]


def directions(model, loss_fn, batch, seed: int = 0) -> dict[str, list[torch.Tensor]]:
    """Unit directions (float64, per parameter): gradient, random, a Lanczos vector, one-tensor ones."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, list[torch.Tensor]] = {}
    g = gradient64(model, loss_fn, batch)
    out["gradient"] = _unit(g)
    out["random"] = _unit([torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params])
    q_prev, q, beta = None, out["gradient"], 0.0  # Lanczos from g in float64 on the exact Hessian
    for _ in range(3):
        w = exact_hvp64(model, loss_fn, batch, q)
        alpha = sum(float((a * b).sum()) for a, b in zip(w, q, strict=True))
        w = [a - alpha * b - (beta * c if q_prev is not None else 0.0) for a, b, c in
             zip(w, q, q_prev or q, strict=True)]  # fmt: skip
        beta = _norm(w)
        q_prev, q = q, [t / beta for t in w]
    out["lanczos_q4"] = q
    for label, pick in one_tensor_choices(names).items():
        v = [torch.zeros(p.shape, dtype=torch.float64) for p in params]
        v[pick] = torch.randn(params[pick].shape, generator=gen, dtype=torch.float64)
        out[label] = _unit(v)
    return out


def one_tensor_choices(names: list[str]) -> dict[str, int]:
    """Concentrated directions: one tensor each (index into the parameter list)."""
    pick = {}
    for label, key in (("on_embedding", "wte"), ("on_layernorm", "ln_f.weight"), ("on_last_bias", "2.bias"),
                       ("on_first_weight", "0.weight")):  # fmt: skip
        hits = [i for i, n in enumerate(names) if key in n]
        if hits:
            pick[label] = hits[0]
    return pick


def rules(params, v) -> dict[str, float]:
    """The perturbation size h = eps |v| each candidate rule chooses for the direction v."""
    w_norm = _norm([p.detach() for p in params])
    n = sum(p.numel() for p in params)
    rms = w_norm / math.sqrt(n)
    out = {"u^(1/3) (1 + |w|)  [old in-process]": U32 ** (1 / 3) * (1 + w_norm)}
    for c in CANDIDATE_C:
        tag = "C=1, committed" if c == 1.0 else f"C={c:g}"
        out[f"{c:g} u^(1/3) max(1, rms w)  [{tag}]"] = c * U32 ** (1 / 3) * max(1.0, rms)
    return out


CANDIDATE_C = (1.0, 2.0, 4.0)
"""Constants C of the rule h = C u^(1/3) max(1, rms w) marked on the curve (C = 1: the committed rule of
:func:`dist_unlearn.curvature.hvp_fd.fd_epsilon`, formerly the workers' own)."""


def _rows(batch, idx):
    return tuple(t[idx] for t in batch) if isinstance(batch, tuple) else batch[idx]


def sharded_gradient(model, loss_fn, batch, params, shards: int = 2, chunk: int = 8):
    """grad L as a 2-rank engine sums it: rank r takes rows r, r + 2, ..., in chunks of 8, each chunk
    weighted by its share of the rows. Same mean, different rounding (the engine's reduction order)."""
    n = len(batch[0]) if isinstance(batch, tuple) else len(batch)

    def grad():
        acc = [torch.zeros_like(p) for p in params]
        for r in range(shards):
            mine = torch.arange(r, n, shards)
            for i in range(0, len(mine), chunk):
                idx = mine[i : i + chunk]
                gs = torch.autograd.grad(loss_fn(model, _rows(batch, idx)) * (len(idx) / n), params)
                for a, g in zip(acc, gs, strict=True):
                    a.add_(g.detach())
        return tuple(acc)

    return grad


def curve(model, loss_fn, batch, hs: list[float], seed: int = 0) -> dict:
    """Per direction: the FD error against the fp64 exact H v at every h (``errors``), the difference
    between two FD HVPs that differ only in the gradients' reduction order (``reorder``: what separates a
    sharded run from a one-process run), and the error at each rule's h."""
    params = [p for p in model.parameters() if p.requires_grad]

    def grad():
        return tuple(g.detach() for g in torch.autograd.grad(loss_fn(model, batch), params))

    grad_sharded = sharded_gradient(model, loss_fn, batch, params)
    out = {}
    for name, v64 in directions(model, loss_fn, batch, seed).items():
        ref = exact_hvp64(model, loss_fn, batch, v64)
        out[name] = _direction_curve(params, [t.float() for t in v64], ref, hs, grad, grad_sharded)
    return out


def _direction_curve(params, v32, ref, hs, grad, grad_sharded) -> dict:
    ref_norm = _norm(ref)

    def fd(h: float, g=grad):
        return fd_hvp(g, params, v32, eps=h / _norm(v32))[0]

    def err(h: float) -> float:
        return _norm([a.double() - b for a, b in zip(fd(h), ref, strict=True)]) / ref_norm

    def reorder(h: float) -> float:
        a, b = fd(h), fd(h, grad_sharded)
        return _norm([x.double() - y.double() for x, y in zip(a, b, strict=True)]) / ref_norm

    return {
        "errors": [err(h) for h in hs],
        "reorder": [reorder(h) for h in hs],
        "rules": {k: {"h": h, "error": err(h), "reorder": reorder(h)} for k, h in rules(params, v32).items()},
        "hv_norm": ref_norm,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(result["models"])
    cols = 2
    rows = -(-len(models) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.8 * rows), squeeze=False)
    markers = {"old in-process": "x", "C=1, committed": "s", "C=2": "o", "C=4": "^"}
    for ax, name in zip(axes.reshape(-1), models, strict=False):
        res = result["models"][name]
        for i, (direction, d) in enumerate(res["curves"].items()):
            color = f"C{i}"
            ax.loglog(result["h"], d["errors"], color=color, label=direction, lw=1.3)
            ax.loglog(result["h"], d["reorder"], color=color, lw=0.8, ls="--")
            for rule, r in d["rules"].items():
                tag = next((t for t in markers if t in rule), None)
                if tag is None:
                    continue
                ax.loglog([r["h"]], [r["error"]], markers[tag], color=color, ms=7, mfc="none")
        ax.set_title(f"{name} ({res['num_params']:,} params, |w| = {res['w_norm']:.3g})", fontsize=10)
        ax.set_xlabel("perturbation size h = eps |v|  (float32 weights)")
        ax.set_ylabel("relative error of H v")
        ax.grid(True, which="both", alpha=0.3)
        ax.axhline(1e-2, color="grey", ls=":", lw=1)
        ax.legend(fontsize=7, loc="upper center", title="direction v", title_fontsize=7)
    handles = [
        plt.Line2D([], [], marker=m, ls="", color="k", mfc="none", label=t) for t, m in markers.items()
    ]
    handles += [
        plt.Line2D([], [], color="k", lw=1.3, label="FD vs float64 exact"),
        plt.Line2D([], [], color="k", lw=0.8, ls="--", label="FD vs FD, sum reordered (as sharded)"),
    ]
    axes.reshape(-1)[-1].legend(handles=handles, title="h of the rule", fontsize=7, loc="lower left")
    fig.suptitle("Central-difference HVP vs step h: rounding (left, ~u/h) vs truncation (right, ~h^2)", y=1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/results/fd_error_curve.json")
    ap.add_argument("--points", type=int, default=29)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    hs = [10 ** (-7 + 7 * i / (a.points - 1)) for i in range(a.points)]
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.node()} {platform.machine()} cpus={os.cpu_count()}",
        "command": " ".join(["python", *sys.argv]),
        "h": hs,
        "models": {},
    }
    for name, build in CASES.items():
        model, loss_fn, batch = build()
        params = [p for p in model.parameters() if p.requires_grad]
        t0 = time.perf_counter()
        curves = curve(model, loss_fn, batch, hs)
        result["models"][name] = {
            "num_params": sum(p.numel() for p in params),
            "w_norm": _norm([p.detach() for p in params]),
            "curves": curves,
            "seconds": time.perf_counter() - t0,
        }
        print(f"{name}: {time.perf_counter() - t0:.1f} s")
        for direction, d in curves.items():
            best = min(range(len(hs)), key=lambda i: d["errors"][i])
            marks = "  ".join(f"{k.split('[')[-1][:-1]} h={r['h']:.1e} err={r['error']:.1e}"
                              for k, r in d["rules"].items())  # fmt: skip
            print(f"  {direction:16s} best h={hs[best]:.1e} err={d['errors'][best]:.1e} | {marks}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
