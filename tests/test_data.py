"""Forget specifications, splits and loaders; every bad input raises DataError naming the bad value."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dist_unlearn.data import ForgetSpec, as_dataset, make_loader, pad_collate, split_forget
from dist_unlearn.errors import ConfigError, DataError


@pytest.fixture
def ds():
    return datasets.Dataset.from_dict(
        {
            "id": [10 + i for i in range(20)],
            "label": [i % 4 for i in range(20)],
            "x": [[float(i), 1.0] for i in range(20)],
        }
    )


def test_split_by_ids_partitions_in_order(ds):
    parts = split_forget(ds, ForgetSpec(ids=[13, 10, 27]))
    retain, forget = parts
    assert list(forget["id"]) == [10, 13, 27] and parts.forget_indices == [0, 3, 17]
    assert len(retain) == 17 and sorted(list(retain["id"]) + list(forget["id"])) == list(ds["id"])
    assert not set(retain["id"]) & set(forget["id"])


def test_split_by_label_and_fraction(ds):
    retain, forget = split_forget(ds, ForgetSpec(label=2))
    assert set(forget["label"]) == {2} and len(forget) == 5 and 2 not in list(retain["label"])
    a = split_forget(ds, {"fraction": 0.25, "seed": 3})
    b = split_forget(ds, ForgetSpec(fraction=0.25, seed=3))
    c = split_forget(ds, ForgetSpec(fraction=0.25, seed=4))
    assert len(a.forget) == 5 and a.forget_indices == b.forget_indices != c.forget_indices


def test_ids_file_text_and_json(ds, tmp_path):
    f = tmp_path / "ids.txt"
    f.write_text("# forget these\n11\n12\n")
    assert list(split_forget(ds, ForgetSpec(ids_file=f)).forget["id"]) == [11, 12]
    j = tmp_path / "ids.json"
    j.write_text(json.dumps([29]))
    assert list(split_forget(ds, ForgetSpec(ids_file=str(j))).forget["id"]) == [29]


def test_ids_are_row_positions_without_id_column():
    data = TensorDataset(torch.arange(6).float().unsqueeze(1), torch.tensor([0, 1, 0, 1, 0, 1]))
    retain, forget = split_forget(data, ForgetSpec(ids=[1, 4]))
    assert forget[:]["input"].squeeze(1).tolist() == [1.0, 4.0] and len(retain) == 4


def test_ids_absent(ds):
    with pytest.raises(DataError, match=r"\[99, 5\].*absent"):
        split_forget(ds, ForgetSpec(ids=[10, 99, 5]))


def test_duplicate_ids(ds):
    with pytest.raises(DataError, match=r"duplicates: \[12\]"):
        split_forget(ds, ForgetSpec(ids=[12, 11, 12]))
    dup = datasets.Dataset.from_dict({"id": [1, 2, 2], "label": [0, 1, 1]})
    with pytest.raises(DataError, match=r"duplicate ids \[2\]"):
        split_forget(dup, ForgetSpec(ids=[1]))


def test_empty_forget_set(ds, tmp_path):
    with pytest.raises(DataError, match=r"empty.*ids=\[\]"):
        ForgetSpec(ids=[])
    with pytest.raises(DataError, match=r"fraction=0.01 of 20 rows rounds to 0"):
        split_forget(ds, ForgetSpec(fraction=0.01))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    with pytest.raises(DataError, match="empty.*empty.txt"):
        split_forget(ds, ForgetSpec(ids_file=empty))


def test_forget_everything(ds):
    with pytest.raises(DataError, match="all 20 rows"):
        split_forget(ds, ForgetSpec(ids=list(range(10, 30))))
    one_class = datasets.Dataset.from_dict({"id": [1, 2], "label": [7, 7]})
    with pytest.raises(DataError, match="label=7.*all 2 rows"):
        split_forget(one_class, ForgetSpec(label=7))
    with pytest.raises(DataError, match="fraction=0.99.*all 20 rows"):
        split_forget(ds, ForgetSpec(fraction=0.99))


def test_label_not_present(ds):
    with pytest.raises(DataError, match=r"label=9 is not present.*\[0, 1, 2, 3\]"):
        split_forget(ds, ForgetSpec(label=9))
    with pytest.raises(DataError, match="'target' column"):
        split_forget(ds, ForgetSpec(label=1), label_column="target")


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.2, float("nan"), "0.1", True])
def test_bad_fraction(bad):
    with pytest.raises(DataError, match=f"fraction={bad!r}".replace("(", r"\(").replace(")", r"\)")):
        ForgetSpec(fraction=bad)


def test_missing_ids_file(ds, tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match="nope.txt.*does not exist"):
        split_forget(ds, ForgetSpec(ids_file=missing))


def test_spec_kind_and_keys():
    with pytest.raises(DataError, match="exactly one.*got ids, label"):
        ForgetSpec(ids=[1], label=2)
    with pytest.raises(DataError, match="got none"):
        ForgetSpec()
    with pytest.raises(ConfigError, match="'fracton'.*Did you mean 'fraction'"):
        ForgetSpec.from_dict({"fracton": 0.1})
    with pytest.raises(DataError, match="seed='a'"):
        ForgetSpec(fraction=0.1, seed="a")


def test_as_dataset_and_make_loader():
    x, y = torch.randn(7, 3), torch.arange(7) % 2
    ds = as_dataset(TensorDataset(x, y))
    assert ds.column_names == ["input", "label"] and torch.allclose(ds[:]["input"], x)
    assert as_dataset(DataLoader(TensorDataset(x, y))).num_rows == 7
    assert as_dataset([{"a": 1}, {"a": 2}])[:]["a"].tolist() == [1, 2]
    with pytest.raises(DataError, match="empty"):
        as_dataset([])
    with pytest.raises(DataError, match="int"):
        as_dataset(5)
    l1 = [b["label"].tolist() for b in make_loader(ds, 3, shuffle=True, seed=1)]
    l2 = [b["label"].tolist() for b in make_loader(ds, 3, shuffle=True, seed=1)]
    assert l1 == l2 and [len(b) for b in l1] == [3, 3, 1]
    assert sorted(sum(l1, [])) == sorted(y.tolist())
    batches = list(make_loader(TensorDataset(x, y), 4))
    assert torch.equal(batches[0][0], x[:4])
    with pytest.raises(DataError, match="batch_size=0"):
        make_loader(ds, 0)


def test_pad_collate_pads_ids_mask_and_labels():
    rows = [
        {"input_ids": [5, 6, 7], "labels": [5, 6, 7], "id": 0},
        {"input_ids": [8], "labels": [8], "id": 1},
    ]
    b = pad_collate(pad_token_id=0)(rows)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"].tolist() == [[5, 6, 7], [8, -100, -100]] and b["id"].tolist() == [0, 1]
