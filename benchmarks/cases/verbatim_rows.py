"""Which forget rows does a model still answer word for word? Per row, for a Q/A case's models.

The audit judges extraction per subject (the mean ROUGE-L quantile of a subject's rows among unseen rows),
so one leaked answer among a person's six rows -- a four-digit locker code -- can pass as forgotten. This
lists every forget row whose greedy answer begins with the true answer
(:func:`dist_unlearn.eval.extraction.extract`), for each model folder given, so that a delivered model can be
compared with the model retrained without the subjects row by row.

    python benchmarks/cases/verbatim_rows.py --case /tmp/cases/lora_people \\
        retrained=/tmp/cases/lora_people/retrained default=/tmp/run_cases/lora_people/default/model

``--tokens PERSON`` also prints, for each model, every answer token of that person's rows with its loss
(-log p) and a ``*`` where it is the model's greedy choice: whether a row's mean loss hides a fact token
that is still the top prediction.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpt2_cases import token_rows  # noqa: E402


def verbatim_rows(case: Path, model: Path) -> list[dict[str, str]]:
    """The forget rows of ``case`` that ``model`` answers verbatim: person, question, greedy answer."""
    from dist_unlearn.eval.extraction import extract
    from dist_unlearn.job.model import inspect_model, load_job_model, load_tokenizer

    ids = {int(x) for x in (case / "forget_ids.txt").read_text().split()}
    rows = [json.loads(line) for line in (case / "train.jsonl").open()]
    forget = [r for r in rows if r["id"] in ids]
    src = inspect_model(model)
    m, tok = load_job_model(src), load_tokenizer(src)
    ex = extract(m, tok, token_rows(forget, tok))
    return [
        {"person": r["person"], "question": r["question"], "generated": g.strip()}
        for r, g, hit in zip(forget, ex.generated, ex.exact, strict=True)
        if hit
    ]


def token_losses(case: Path, model: Path, person: str) -> list[str]:
    """One line per forget row of ``person``: mean answer loss, then each answer token as text:loss (``*``:
    the model's greedy choice at that position)."""
    from dist_unlearn.job.model import inspect_model, load_job_model, load_tokenizer

    rows = [json.loads(line) for line in (case / "train.jsonl").open()]
    src = inspect_model(model)
    m, tok = load_job_model(src), load_tokenizer(src)
    lines = []
    for row in [r for r in rows if r["person"] == person]:
        t = token_rows([row], tok)[0]
        with torch.no_grad():
            logp = torch.log_softmax(m(input_ids=torch.tensor([t["input_ids"]])).logits[0, :-1].float(), -1)
        cells, losses = [], []
        for i, y in enumerate(t["labels"][1:]):
            if y == -100:
                continue
            loss = -float(logp[i, y])
            losses.append(loss)
            star = "*" if int(logp[i].argmax()) == y else ""
            cells.append(f"{tok.decode([y])!r}:{loss:.2f}{star}")
        lines.append(f"mean {sum(losses) / len(losses):.2f}  " + " ".join(cells))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", type=Path, required=True, help="a gpt2_cases.py case folder")
    ap.add_argument("models", nargs="+", help="NAME=model folder (a save_pretrained or adapter folder)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--tokens", action="append", default=[], metavar="PERSON", help="print token losses")
    args = ap.parse_args()
    torch.set_num_threads(1)
    n = len((args.case / "forget_ids.txt").read_text().split())
    out = {}
    for spec in args.models:
        name, _, folder = spec.partition("=")
        hits = verbatim_rows(args.case, Path(folder))
        out[name] = {"forget_rows": n, "verbatim": hits}
        print(f"{name}: {len(hits)} of {n} forget rows answered verbatim", flush=True)
        for h in hits:
            print(f"  {h['person']}: {h['generated']}")
        for person in args.tokens:
            for line in token_losses(args.case, Path(folder), person):
                print(f"  [{person}] {line}")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
