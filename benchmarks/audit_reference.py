"""Does the audit pass a model retrained without the subjects and fail the untouched original? (demo size)

Builds (or reuses) the demo's inputs: a small GPT-2 fine-tuned on Q/A rows of fictitious people, the ids of
the people who asked to be forgotten and a holdout of people it never saw. Retrains the same recipe on the
retained rows only (same tokenizer, config, seed, epochs), then audits three models with the demo's job
(``dist_unlearn.job.audit_only.audit_model``: per-subject verdict over LOSS / zlib / Min-K% / Min-K%++ /
extraction, and the robustness probes): the original, the retrained model, and optionally a model an
unlearning job delivered (``--unlearned``). Prints the per-subject tables, attack AUCs and probes, and
writes one JSON with everything.

    python benchmarks/audit_reference.py --inputs runs/unlearn_demo/inputs --out /tmp/audit_reference \\
        --unlearned runs/unlearn_demo/unlearned/model --json benchmarks/results/audit_reference.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dist_unlearn.demo.__main__ import EPOCHS, FORGET_PEOPLE, HOLDOUT_PEOPLE, PEOPLE, demo_job
from dist_unlearn.job.audit_only import audit_model


def retrain(inputs: Path, out: Path) -> Path:
    """The demo's fine-tune on the retained rows only: same tokenizer, model config, seed and epochs."""
    from transformers import AutoTokenizer

    from dist_unlearn.data.files import load_table
    from dist_unlearn.data.tokenize import TextFormat, tokenize_rows
    from dist_unlearn.demo.people import QA_TEMPLATE, fine_tune, small_gpt2

    tok = AutoTokenizer.from_pretrained(str(inputs / "model"))
    fmt = TextFormat(
        "prompt_response", prompt_column="question", response_column="answer", prompt_template=QA_TEMPLATE
    )
    forget = {int(x) for x in (inputs / "forget_ids.txt").read_text().split()}
    table = load_table(inputs / "train.jsonl")
    keep = [i for i, r in enumerate(table["id"]) if int(r) not in forget]
    rows = tokenize_rows(table.select(keep), tok, fmt)
    model = small_gpt2(tok, seed=0)
    fine_tune(model, rows, pad_id=tok.pad_token_id, epochs=EPOCHS, seed=0)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def summary(name: str, res) -> dict:
    a = res.audit
    ver = a["verdict"]
    print(f"\n== {name}: {ver['status']}. {ver['sentence']}")
    for r in ver["subjects"] + ([ver["pooled"]] if ver.get("pooled") else []):
        qs = ", ".join(f"{t} {x['quantile']:.2f}" for t, x in r["tests"].items())
        print(f"  {r['subject']:<22} {r['status']:<13} band {r['band'][0]:.2f}-{r['band'][1]:.2f}  {qs}")
    ev = a["evidence"]["after"]
    print("  attack AUCs:", {k: round(v, 3) for k, v in (ev["attacks"] or {}).items()})
    print("  extraction:", ev.get("extraction"))
    for p in (a.get("probes") or {}).get("probes", []):
        if p.get("skipped"):
            print(f"  probe {p['probe']}: skipped")
            continue
        g = p["aucs"]["loss"]
        print(
            f"  probe {p['probe']:<20} {p['status']:<20} LOSS AUC {g['delivered']:.3f} -> {g['probe']:.3f}; "
            f"failing {p['failing']}; holdout loss change {p['holdout_loss_change']:+.1%}"
        )
    return {
        "status": ver["status"],
        "sentence": ver["sentence"],
        "subjects": ver["subjects"],
        "pooled": ver.get("pooled"),
        "inflation": ver["inflation"],
        "attacks": ev["attacks"],
        "extraction": ev.get("extraction"),
        "probes": a.get("probes"),
        "audit_cost": a["audit"]["cost"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=Path, required=True, help="the demo's inputs (built when absent)")
    ap.add_argument("--out", type=Path, required=True, help="a folder for the retrained model and audits")
    ap.add_argument("--unlearned", type=Path, default=None, help="also audit this delivered model folder")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if not (args.inputs / "model" / "config.json").is_file():
        from dist_unlearn.demo.people import build_demo

        build_demo(
            args.inputs, n_people=PEOPLE, n_holdout=HOLDOUT_PEOPLE, n_forget=FORGET_PEOPLE, epochs=EPOCHS
        )
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    retrained = args.out / "retrained"
    if not (retrained / "config.json").is_file():
        retrain(args.inputs, retrained)
    print(f"retrained in {time.perf_counter() - t0:.0f} s")
    models = {"original": args.inputs / "model", "retrained": retrained}
    if args.unlearned is not None:
        models["unlearned"] = args.unlearned
    results = {}
    for name, folder in models.items():
        t = time.perf_counter()
        job = demo_job(args.inputs, args.out / f"audit_{name}", model=str(folder))
        res = audit_model(job, overwrite=True, log=lambda m: None)
        results[name] = summary(name, res) | {"wall_time_s": time.perf_counter() - t}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
