"""User data files (data.files) and tokenisation for the job's losses (data.tokenize)."""

from __future__ import annotations

import json

import datasets
import pytest

from dist_unlearn.data.files import count_overlap, load_table, require_columns, select_forget
from dist_unlearn.data.tokenize import TextFormat, label_ids, tokenize_rows
from dist_unlearn.errors import ConfigError, DataError

ROWS = [{"id": 10 + i, "author": ["ann", "bob", "cy"][i % 3], "text": f"row number {i}"} for i in range(6)]


def _write_all(tmp_path):
    import pandas as pd

    df = pd.DataFrame(ROWS)
    paths = {
        "jsonl": tmp_path / "d.jsonl",
        "json": tmp_path / "d.json",
        "csv": tmp_path / "d.csv",
        "parquet": tmp_path / "d.parquet",
        "disk": tmp_path / "saved",
    }
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    paths["json"].write_text(json.dumps(ROWS))
    df.to_csv(paths["csv"], index=False)
    df.to_parquet(paths["parquet"])
    datasets.Dataset.from_list(ROWS).save_to_disk(str(paths["disk"]))
    return paths


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet", "disk"])
def test_every_format_loads_the_same_rows(tmp_path, kind):
    ds = load_table(_write_all(tmp_path)[kind])
    got = [{k: ds[i][k] for k in ("id", "author", "text")} for i in range(len(ds))]
    assert got == ROWS


def test_bad_files_raise_data_errors_naming_the_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_table(tmp_path / "nope.jsonl")
    (tmp_path / "d.txt").write_text("hello")
    with pytest.raises(DataError, match=r"unknown format '\.txt'.*\.jsonl"):
        load_table(tmp_path / "d.txt")
    (tmp_path / "bad.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match="could not be read as parquet"):
        load_table(tmp_path / "bad.parquet")
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{not json\n')
    with pytest.raises(DataError, match="could not be read as json"):
        load_table(tmp_path / "bad.jsonl")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="not a datasets.save_to_disk folder"):
        load_table(tmp_path / "empty_dir")


def test_absent_column_lists_the_columns():
    ds = datasets.Dataset.from_list(ROWS)
    with pytest.raises(DataError, match=r"text_column='body'.*\['id', 'author', 'text'\]"):
        require_columns(ds, {"text_column": "body"})


def test_forget_selectors_resolve_to_the_right_rows(tmp_path):
    ds = datasets.Dataset.from_list(ROWS)
    assert select_forget(ds, ids=[11, 14]).indices == [1, 4]
    f = tmp_path / "ids.txt"
    f.write_text("# people who asked\n15\n10\n")
    sel = select_forget(ds, ids_file=f)
    assert sel.indices == [0, 5] and sel.ids == [10, 15] and sel.id_source == "column 'id'"
    assert select_forget(ds, where={"author": "bob"}).indices == [1, 4]
    assert select_forget(ds, where={"author": ["ann", "cy"], "id": 12}).indices == [2]
    no_id = ds.remove_columns("id")  # ids are row numbers then
    sel = select_forget(no_id, ids=[0, 3])
    assert sel.indices == [0, 3] and sel.id_source == "row number"


def test_forget_selector_errors(tmp_path):
    ds = datasets.Dataset.from_list(ROWS)
    with pytest.raises(DataError, match=r"\[99, 98\] \(2 in all\) are absent"):
        select_forget(ds, ids=[11, 99, 98])
    with pytest.raises(DataError, match="empty"):
        select_forget(ds, ids=[])
    empty = tmp_path / "none.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(DataError, match="empty"):
        select_forget(ds, ids_file=empty)
    with pytest.raises(DataError, match="covers all 6 rows"):
        select_forget(ds, ids=[r["id"] for r in ROWS])
    with pytest.raises(DataError, match=r"no row of the data has author in \['zed'\].*'ann'"):
        select_forget(ds, where={"author": "zed"})
    with pytest.raises(DataError, match=r"'writer' is not a column.*\['id', 'author', 'text'\]"):
        select_forget(ds, where={"writer": "ann"})
    with pytest.raises(DataError, match="exactly one"):
        select_forget(ds, ids=[10], where={"author": "ann"})


def test_count_overlap_counts_identical_content_rows():
    train = datasets.Dataset.from_list(ROWS)
    hold = datasets.Dataset.from_list([{"text": "row number 2"}, {"text": "new"}, {"text": "row number 5"}])
    assert count_overlap(train, hold, ["text"]) == 2
    assert count_overlap(train, hold, ["missing"]) == 0


# ------------------------------------------------------------------------------------------- tokenize
@pytest.fixture(scope="module")
def tok():
    from dist_unlearn.demo.people import train_tokenizer

    return train_tokenizer(["Question: where is Ann?\nAnswer: Ann lives in Oslo.", "good bad film"] * 5, 300)


def test_prompt_response_scores_only_the_response(tok):
    ds = datasets.Dataset.from_list([{"q": "where is Ann?", "a": "Ann lives in Oslo."}])
    fmt = TextFormat.infer(
        prompt_column="q", response_column="a", prompt_template="Question: {prompt}\nAnswer:"
    )
    row = tokenize_rows(ds, tok, fmt)[0]
    prompt = tok("Question: where is Ann?\nAnswer:")["input_ids"]
    answer = tok(" Ann lives in Oslo.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert row["input_ids"] == prompt + answer
    assert row["labels"] == [-100] * len(prompt) + answer
    assert row["attention_mask"] == [1] * len(prompt + answer)
    n = len(prompt) + 1
    fmt_short = TextFormat.infer(
        prompt_column="q", response_column="a", max_length=n, prompt_template="Question: {prompt}\nAnswer:"
    )
    short = tokenize_rows(ds, tok, fmt_short)[0]
    assert short["input_ids"] == (prompt + answer)[:n]  # cut on the right, the first response token scored
    assert short["labels"] == [-100] * len(prompt) + answer[:1]
    with pytest.raises(DataError, match="leaves no response token"):
        tokenize_rows(
            ds,
            tok,
            TextFormat.infer(
                prompt_column="q",
                response_column="a",
                max_length=n - 1,
                prompt_template="Question: {prompt}\nAnswer:",
            ),
        )


def test_chat_template_marks_the_assistant_turn():
    from dist_unlearn.demo.people import train_tokenizer

    t = train_tokenizer(["user: hi\nassistant: hello there"] * 5, 300)
    t.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}reply now:{% endif %}"
    )
    ds = datasets.Dataset.from_list([{"q": "hi", "a": "hello there"}])
    with pytest.raises(DataError, match="renders the prompt differently"):
        tokenize_rows(ds, t, TextFormat.infer(prompt_column="q", response_column="a", chat=True))
    t.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}user: {{ m['content'] }}\nassistant:"
        "{% else %} {{ m['content'] }}\n{% endif %}{% endfor %}"
    )
    row = tokenize_rows(ds, t, TextFormat.infer(prompt_column="q", response_column="a", chat=True))[0]
    head = t("user: hi\nassistant:")["input_ids"]
    assert row["input_ids"][: len(head)] == head
    assert row["labels"][: len(head)] == [-100] * len(head) and -100 not in row["labels"][len(head) :]
    tok_without_chat = train_tokenizer(["x y"] * 3, 260)
    with pytest.raises(ConfigError, match="no chat template"):
        tokenize_rows(
            ds, tok_without_chat, TextFormat.infer(prompt_column="q", response_column="a", chat=True)
        )


def test_text_and_classification_rows(tok):
    ds = datasets.Dataset.from_list([{"t": "good film", "y": "pos"}, {"t": "bad film", "y": "neg"}])
    text = tokenize_rows(ds, tok, TextFormat.infer(text_column="t"))
    assert text[0]["input_ids"] == tok("good film")["input_ids"] and "labels" not in text.column_names
    cls = tokenize_rows(
        ds,
        tok,
        TextFormat.infer(text_column="t", label_column="y"),
        label2id={"neg": 0, "pos": 1},
        num_labels=2,
    )
    assert cls["label"] == [1, 0]
    with pytest.raises(DataError, match=r"label 'meh' is not one of the model's labels \['neg', 'pos'\]"):
        label_ids(["meh"], {"neg": 0, "pos": 1}, 2)
    with pytest.raises(DataError, match="outside the model's classes 0..1"):
        label_ids([2], None, 2)


def test_layouts_that_name_nothing_are_config_errors():
    with pytest.raises(ConfigError, match="both prompt_column and response_column"):
        TextFormat.infer(prompt_column="q")
    with pytest.raises(ConfigError, match="needs text_column"):
        TextFormat.infer()
    assert TextFormat.infer(text_column="t").task == "causal_lm"
    assert TextFormat.infer(text_column="t", label_column="y").task == "classification"
