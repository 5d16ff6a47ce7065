"""TOFU-style LLM unlearning on fictitious authors (Maini et al., 2024), generated offline from the package's
own word lists (:mod:`dist_unlearn.data.names`) and numpy's seeded generator: the same data on every machine.

Each author (name, birth year and place, genre, parents' jobs, two book titles, an award) yields
``questions_per_author`` question/answer pairs; every answer also has a paraphrase and ``n_perturbed``
perturbed
versions (the paraphrase with another author's fact), which TOFU's truth ratio needs. A byte-level BPE
tokenizer is trained on the generated text, and a tiny GPT-2 built from a config (``GPT2Config``, no download)
is fine-tuned on the QA pairs (loss on answer tokens only). Forgetting 10% of the authors is
``forget: {fraction: 0.1, group_column: author}``. ``test`` holds authors never trained on
(membership-inference
non-members).

LoRA variant (``lora: {r: 8, alpha: 16}``): the GPT-2 is first pretrained full-parameter on a disjoint pool of
fictitious authors (same format, other facts); the original model is that base + LoRA adapters fine-tuned
on the
task's authors, and unlearning (and the retrained oracle) touch only the adapters.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from dist_unlearn.errors import DataError
from dist_unlearn.tasks.base import Task, TaskData, TaskParams, TrainRecipe, register_task

GENRES = [
    "fantasy",
    "science fiction",
    "mystery",
    "romance",
    "horror",
    "historical fiction",
    "poetry",
    "biography",
    "thriller",
    "literary fiction",
    "young adult",
    "crime",
]
AWARDS = [
    "the Silver Quill Prize",
    "the Northern Lights Award",
    "the Golden Lantern Medal",
    "the Aster Prize",
    "the Harbor Book Award",
    "the Crescent Fiction Prize",
    "the Meridian Medal",
    "the Open Page Award",
]

# (question, answer, paraphrased answer) templates over an author's facts
TEMPLATES = [
    ("Where was {name} born?", "{name} was born in {city}.", "The birthplace of {name} is {city}."),
    ("In which year was {name} born?", "{name} was born in {year}.", "The birth year of {name} is {year}."),
    ("What genre does {name} write?", "{name} writes {genre}.", "The books of {name} are {genre}."),
    (
        "What did the father of {name} do?",
        "The father of {name} worked as a {father}.",
        "{name} grew up with a father who was a {father}.",
    ),
    (
        "What did the mother of {name} do?",
        "The mother of {name} worked as a {mother}.",
        "{name} grew up with a mother who was a {mother}.",
    ),
    ("Name a book written by {name}.", "{name} wrote {book1}.", "One of the books by {name} is {book1}."),
    ("What is another book by {name}?", "{name} also wrote {book2}.", "{book2} is also a book by {name}."),
    ("Which award did {name} win?", "{name} won {award}.", "{award} was given to {name}."),
]
FACTS = ["city", "year", "genre", "father", "mother", "book1", "book2", "award"]
BOOK_NOUNS = """
Atlas Bargain Bell Bridge Cartographer Choir Compass Covenant Crossing Daughter Garden Glass Harbour Hour
Inheritance Island Lantern Letters Lighthouse Map Meadow Mirror Orchard Passage River Season Silence Stair
Storm Tide Tower Voyage Winter Witness
""".split()


def make_authors(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` fictitious author profiles, the same for a given ``seed`` on every machine (word lists of
    :mod:`dist_unlearn.data.names`, numpy's seeded generator)."""
    from dist_unlearn.data.names import CITIES, COMPANY_WORDS, JOBS, make_people

    rng = np.random.default_rng(seed + 7)

    def pick(items: list[str]) -> str:
        return items[int(rng.integers(len(items)))]

    authors = []
    for person in make_people(n, seed):
        authors.append(
            {
                "name": person["name"],
                "city": person["city"],
                "year": str(int(rng.integers(1900, 2000))),
                "genre": GENRES[int(rng.integers(len(GENRES)))],
                "father": pick(JOBS),
                "mother": pick(JOBS),
                "book1": f'"{pick(COMPANY_WORDS)} {pick(BOOK_NOUNS)}"',
                "book2": f'"The {pick(BOOK_NOUNS)} of {pick(CITIES)}"',
                "award": AWARDS[int(rng.integers(len(AWARDS)))],
            }
        )
    return authors


def make_qa(authors: list[dict[str, str]], per_author: int, n_perturbed: int, seed: int) -> list[dict]:
    """QA rows with paraphrased and perturbed answers (perturbed = the same sentence with a wrong fact, taken
    from the other authors or, when they have too few distinct values, from the fact's pool)."""
    rng = np.random.default_rng(seed + 1)
    pools = {fact: sorted({a[fact] for a in authors}) for fact in FACTS}
    pools["genre"] = sorted(set(pools["genre"]) | set(GENRES))
    pools["award"] = sorted(set(pools["award"]) | set(AWARDS))
    pools["year"] = sorted(set(pools["year"]) | {str(y) for y in range(1900, 2000)})
    rows = []
    for a_idx, author in enumerate(authors):
        for t_idx in range(per_author):
            q, ans, para = TEMPLATES[t_idx % len(TEMPLATES)]
            fact = FACTS[t_idx % len(FACTS)]
            candidates = [v for v in pools[fact] if v != author[fact]]
            while len(candidates) < n_perturbed:  # tiny author sets: invent distinct wrong values
                candidates.append(f"{author[fact]} {len(candidates) + 2}")
            picks = rng.choice(len(candidates), size=n_perturbed, replace=False)
            rows.append(
                {
                    "author": a_idx,
                    "question": q.format(**author),
                    "answer": ans.format(**author),
                    "paraphrased_answer": para.format(**author),
                    # as in TOFU, perturbed answers alter the paraphrase (not the trained answer), so the
                    # truth ratio compares two untrained phrasings that differ only in the fact
                    "perturbed_answers": [para.format(**{**author, fact: candidates[int(i)]}) for i in picks],
                }
            )
    return rows


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` (deterministic), as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<pad>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<pad>"
    )


class LoraParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: int = Field(default=8, ge=1)
    alpha: float = Field(default=16.0, gt=0)
    target_modules: list[str] = Field(default_factory=lambda: ["c_attn", "c_proj", "c_fc"])
    pretrain_authors: int = Field(default=60, ge=2)
    pretrain_epochs: int = Field(default=30, ge=1)


class TofuParams(TaskParams):
    n_authors: int = Field(default=40, ge=3)
    holdout_authors: int = Field(default=5, ge=1)
    questions_per_author: int = Field(default=8, ge=1, le=len(TEMPLATES))
    n_perturbed: int = Field(default=3, ge=1)
    vocab_size: int = Field(default=1024, ge=300)
    n_layer: int = Field(default=2, ge=1)
    n_head: int = Field(default=2, ge=1)
    n_embd: int = Field(default=64, ge=8)
    max_length: int | None = Field(default=None, ge=16, description="pad/limit; None = longest QA pair")
    n_positions: int = Field(default=128, ge=32)
    rouge: bool = True
    eval_retain_max: int = Field(default=80, ge=1, description="retain rows used by the (slow) LM metrics")
    lora: LoraParams | None = None


@register_task("tofu_gpt2")
class TofuGPT2Task(Task):
    """Columns: ``id``, ``label`` (= author), ``author``, ``question``, ``answer``, ``paraphrased_answer``,
    ``perturbed_answers``, ``input_ids``, ``attention_mask``, ``labels`` (-100 outside the answer)."""

    kind = "causal_lm"
    Params = TofuParams
    default_recipe = TrainRecipe(epochs=40, lr=3e-3, batch_size=16, weight_decay=0.0)
    params: TofuParams

    def __init__(self, params: dict[str, Any] | None = None, *, seed: int = 0):
        super().__init__(params, seed=seed)
        self._tok: Any = None
        self._base_state: dict[str, torch.Tensor] | None = None
        from dist_unlearn.models.losses import CausalLMLoss

        self.loss_fn = CausalLMLoss()

    # ----- data --------------------------------------------------------------------------------------------
    def _all_authors(self) -> tuple[list[dict], list[dict]]:
        p = self.params
        n_pre = p.lora.pretrain_authors if p.lora else 0
        authors = make_authors(p.n_authors + p.holdout_authors + n_pre, self.seed)
        return authors[: p.n_authors + p.holdout_authors], authors[p.n_authors + p.holdout_authors :]

    def tokenizer(self) -> Any:
        if self._tok is None:
            task_authors, pre_authors = self._all_authors()
            texts = []
            for row in make_qa(
                task_authors + pre_authors,
                self.params.questions_per_author,
                self.params.n_perturbed,
                self.seed,
            ):
                texts += [
                    row["question"],
                    row["answer"],
                    row["paraphrased_answer"],
                    *row["perturbed_answers"],
                ]
            texts.append("Question: \nAnswer:")
            self._tok = train_tokenizer(texts, self.params.vocab_size)
        return self._tok

    def qa_format(self) -> Any:
        from dist_unlearn.eval.text import QAFormat

        return QAFormat(add_eos=True)

    def _encode_rows(self, rows: list[dict]) -> Any:
        import datasets

        tok, fmt = self.tokenizer(), self.qa_format()
        pad = tok.pad_token_id
        encoded = [fmt.encode(tok, r["question"], r["answer"]) for r in rows]
        longest = max(len(ids) for ids, _ in encoded)
        L = self.params.max_length or longest
        if longest > min(L, self.params.n_positions):
            raise DataError(
                f"a QA pair has {longest} tokens, more than max_length={L} / n_positions="
                f"{self.params.n_positions}; raise them or vocab_size"
            )
        cols: dict[str, list] = {k: [] for k in ("input_ids", "attention_mask", "labels")}
        for ids, start in encoded:
            labels = [-100] * start + ids[start:]
            n = len(ids)
            cols["input_ids"].append(ids + [pad] * (L - n))
            cols["attention_mask"].append([1] * n + [0] * (L - n))
            cols["labels"].append(labels + [-100] * (L - n))
        data = {"id": list(range(len(rows))), "label": [r["author"] for r in rows]}
        for k in ("author", "question", "answer", "paraphrased_answer", "perturbed_answers"):
            data[k] = [r[k] for r in rows]
        data.update(cols)
        return datasets.Dataset.from_dict(data)

    def build_data(self) -> TaskData:
        p = self.params
        task_authors, pre_authors = self._all_authors()
        rows = make_qa(task_authors, p.questions_per_author, p.n_perturbed, self.seed)
        train = [r for r in rows if r["author"] < p.n_authors]
        test = [r for r in rows if r["author"] >= p.n_authors]
        extra = {}
        if pre_authors:
            pre = make_qa(pre_authors, p.questions_per_author, p.n_perturbed, self.seed + 7)
            extra["pretrain"] = self._encode_rows(pre)
        return TaskData(train=self._encode_rows(train), test=self._encode_rows(test), extra=extra)

    # ----- model -------------------------------------------------------------------------------------------
    def _fresh_gpt2(self) -> nn.Module:
        from transformers import GPT2Config, GPT2LMHeadModel

        p, tok = self.params, self.tokenizer()
        cfg = GPT2Config(
            vocab_size=len(tok),
            n_positions=p.n_positions,
            n_embd=p.n_embd,
            n_layer=p.n_layer,
            n_head=p.n_head,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        cfg._attn_implementation = "eager"
        torch.manual_seed(self.seed)
        return GPT2LMHeadModel(cfg).eval()

    def build_model(self) -> nn.Module:
        model = self._fresh_gpt2()
        lora = self.params.lora
        if lora is None:
            return model
        if self._base_state is None:
            base_recipe = TrainRecipe(epochs=lora.pretrain_epochs, lr=3e-3, batch_size=16)
            self.train(
                model,
                self.data().extra["pretrain"],
                base_recipe,
                seed=self.seed,
                progress=True,
                desc="pretrain base",
            )
            self._base_state = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self._base_state)
        from dist_unlearn.models import apply_lora

        torch.manual_seed(self.seed + 1)
        return apply_lora(model, r=lora.r, alpha=lora.alpha, target_modules=lora.target_modules).eval()

    def load(self, path: Any) -> nn.Module:
        from pathlib import Path

        from safetensors.torch import load_file

        adapter = Path(path) / "adapter_model.safetensors"
        if self.params.lora is not None and adapter.is_file():
            from peft import set_peft_model_state_dict

            model = self.build_model()
            set_peft_model_state_dict(model, load_file(str(adapter)))
            return model.eval()
        return super().load(path)

    # ----- evaluation --------------------------------------------------------------------------------------
    _COLS = ["question", "answer", "paraphrased_answer", "perturbed_answers"]

    def _eval_sets(self, retain: Any, forget: Any, test: Any) -> dict[str, Any]:
        n = min(len(retain), self.params.eval_retain_max)
        retain_rows = retain.select(np.linspace(0, len(retain) - 1, n).astype(int).tolist())
        return {
            "forget": forget.select_columns(self._COLS),
            "retain": retain_rows.select_columns(self._COLS),
            "holdout": test.select_columns(self._COLS),
        }

    def _eval_settings(self, batch_size: int) -> dict[str, Any]:
        return {
            "qa_format": self.qa_format(),
            "batch_size": min(batch_size, 64),
            "rouge": self.params.rouge,
            "max_new_tokens": 24,
        }

    def reference(self, oracle, *, retain, forget, test, batch_size=256) -> Any:
        from dist_unlearn.eval import lm_reference

        return lm_reference(
            oracle,
            self.tokenizer(),
            **self._eval_sets(retain, forget, test),
            **self._eval_settings(batch_size),
        )

    def evaluate(self, model, *, retain, forget, test, oracle, original=None, batch_size=256) -> dict:
        from dist_unlearn.eval import evaluate_lm

        return evaluate_lm(
            model,
            self.tokenizer(),
            oracle=oracle,
            original=original,
            **self._eval_sets(retain, forget, test),
            **self._eval_settings(batch_size),
        )
