import csv
import json
from collections import Counter

import pytest

from lmtune.errors import InputError
from lmtune.finetune.data import load_dataset, proxy_subset


@pytest.fixture(scope="module")
def bbc():
    return load_dataset()


def _ids(rows):
    return [row["text"] for row in rows]


def test_bbc_news_default_has_five_named_classes_and_every_distinct_article(bbc):
    assert bbc.task == "classification"
    assert bbc.name == "bbc-news"
    assert bbc.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(bbc.train) + len(bbc.validation) + len(bbc.test) == 2127  # 2,225 files, 98 verbatim repeats
    assert (len(bbc.validation), len(bbc.test)) == (213, 425)
    assert {row["label"] for row in bbc.train} == set(range(5))
    assert all(isinstance(row["text"], str) and row["text"] for row in bbc.train)


def test_bbc_splits_are_disjoint_stratified_and_seeded(bbc):
    rows = bbc.train + bbc.validation + bbc.test
    assert len({row["text"] for row in rows}) == 2127  # no article in two splits
    # each split holds every class in about its overall share
    overall = Counter(row["label"] for row in rows)
    for split in (bbc.validation, bbc.test):
        counts = Counter(row["label"] for row in split)
        for label, n in overall.items():
            assert abs(counts[label] / len(split) - n / len(rows)) < 0.01
    again = load_dataset("bbc-news", seed=0)
    assert _ids(again.validation) == _ids(bbc.validation) and _ids(again.test) == _ids(bbc.test)
    other = load_dataset(seed=1)
    assert _ids(other.validation) != _ids(bbc.validation)


def test_proxy_subset_is_seeded_and_sized(bbc):
    rows = bbc.train
    subset = proxy_subset(rows, 0.1, seed=3)
    assert len(subset) == round(0.1 * len(rows))
    assert _ids(subset) == _ids(proxy_subset(rows, 0.1, seed=3))
    assert _ids(subset) != _ids(proxy_subset(rows, 0.1, seed=4))
    assert len(proxy_subset(rows[:5], 0.01)) == 1
    assert proxy_subset(rows, 1.0) == rows


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5])
def test_proxy_fraction_outside_unit_interval_is_rejected(fraction):
    with pytest.raises(InputError) as err:
        proxy_subset([{"text": "a", "label": 0}], fraction)
    assert err.value.field == "proxy_fraction"


def _write_csv(path, rows):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_csv_classification_maps_string_labels_to_sorted_ids(tmp_path):
    rows = [{"text": f"text {i}", "label": ["spam", "ham", "eggs"][i % 3]} for i in range(30)]
    splits = load_dataset(str(_write_csv(tmp_path / "mail.csv", rows)))
    assert splits.task == "classification"
    assert splits.label_names == ["eggs", "ham", "spam"]
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (21, 3, 6)
    by_text = {row["text"]: row["label"] for row in splits.train + splits.validation + splits.test}
    assert by_text["text 0"] == 2 and by_text["text 1"] == 1 and by_text["text 2"] == 0


def test_csv_integer_labels_are_ordered_numerically(tmp_path):
    rows = [{"text": f"review {i}", "label": [2, 10, 1][i % 3]} for i in range(30)]
    splits = load_dataset(str(_write_csv(tmp_path / "stars.csv", rows)))
    assert splits.label_names == ["1", "2", "10"]
    by_text = {row["text"]: row["label"] for row in splits.train + splits.validation + splits.test}
    assert (by_text["review 2"], by_text["review 0"], by_text["review 1"]) == (0, 1, 2)


def test_jsonl_causal_with_custom_columns(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"a{i}", "extra": i} for i in range(20)]
    splits = load_dataset(str(_write_jsonl(tmp_path / "qa.jsonl", rows)), prompt_field="question",
                          response_field="answer")
    assert splits.task == "causal" and splits.label_names is None
    assert all(set(row) == {"prompt", "response"} for row in splits.train + splits.validation + splits.test)
    assert sorted(row["prompt"] for row in splits.train + splits.validation + splits.test) == sorted(
        f"q{i}" for i in range(20))


def test_csv_causal_and_jsonl_classification(tmp_path):
    qa = load_dataset(str(_write_csv(tmp_path / "qa.csv", [{"prompt": f"p{i}", "response": f"r{i}"}
                                                            for i in range(10)])))
    assert qa.task == "causal" and {"prompt": "p3", "response": "r3"} in qa.train + qa.validation + qa.test
    topics = load_dataset(str(_write_jsonl(tmp_path / "topics.jsonl", [{"text": f"t{i}", "label": i % 2}
                                                                       for i in range(10)])))
    assert topics.task == "classification" and topics.label_names == ["0", "1"]
    assert {"text": "t3", "label": 1} in topics.train + topics.validation + topics.test


def test_split_column_is_respected(tmp_path):
    rows = [{"prompt": f"p{i}", "response": "r", "split": "train"} for i in range(5)]
    rows += [{"prompt": "v", "response": "r", "split": "validation"},
             {"prompt": "t", "response": "r", "split": "test"}]
    splits = load_dataset(str(_write_jsonl(tmp_path / "qa.jsonl", rows)))
    assert [row["prompt"] for row in splits.validation] == ["v"]
    assert [row["prompt"] for row in splits.test] == ["t"]
    assert len(splits.train) == 5


def test_directory_of_split_files_shares_one_label_mapping(tmp_path):
    _write_csv(tmp_path / "train.csv", [{"text": f"t{i}", "label": "b" if i % 2 else "a"} for i in range(10)])
    _write_jsonl(tmp_path / "validation.jsonl", [{"text": "v", "label": "c"}])
    splits = load_dataset(str(tmp_path))
    assert splits.label_names == ["a", "b", "c"]
    assert splits.validation == [{"text": "v", "label": 2}]
    assert (len(splits.train), len(splits.test)) == (8, 2)  # test carved out of train


def test_task_can_be_forced_and_unknown_task_is_rejected(tmp_path):
    row = {"text": "x", "label": 0, "prompt": "p", "response": "r"}
    path = _write_jsonl(tmp_path / "both.jsonl", [row] * 10)
    assert load_dataset(str(path), task="causal").task == "causal"
    with pytest.raises(InputError) as err:
        load_dataset(str(path), task="regression")
    assert err.value.field == "task"


def test_missing_file_names_the_dataset_field(tmp_path):
    with pytest.raises(InputError) as err:
        load_dataset(str(tmp_path / "nope.csv"))
    assert err.value.field == "dataset"


@pytest.mark.parametrize(("row", "missing"), [({"text": "x"}, "label"), ({"prompt": "p"}, "response")])
def test_missing_column_names_that_column(tmp_path, row, missing):
    path = _write_jsonl(tmp_path / "data.jsonl", [row] * 10)
    with pytest.raises(InputError) as err:
        load_dataset(str(path))
    assert err.value.field == missing


def test_too_few_rows_to_split(tmp_path):
    path = _write_csv(tmp_path / "tiny.csv", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    with pytest.raises(InputError, match="too few rows") as err:
        load_dataset(str(path))
    assert err.value.field == "dataset"


def test_hub_dataset_keeps_its_splits_and_class_names(monkeypatch):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["world", "sports"])})
    train = {"text": [f"t{i}" for i in range(20)], "label": [i % 2 for i in range(20)]}
    hub = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict(train, features=features),
        "test": datasets.Dataset.from_dict({"text": ["x", "y"], "label": [1, 0]}, features=features),
    })
    monkeypatch.setattr(datasets, "load_dataset", lambda source: hub)
    splits = load_dataset("someone/news")
    assert splits.name == "someone/news" and splits.task == "classification"
    assert splits.label_names == ["world", "sports"]
    assert splits.test == [{"text": "x", "label": 1}, {"text": "y", "label": 0}]
    assert (len(splits.train), len(splits.validation)) == (18, 2)  # validation carved out of train


def test_unreachable_hub_dataset_is_an_input_error():
    with pytest.raises(InputError) as err:
        load_dataset("no-such-owner/no-such-dataset")
    assert err.value.field == "dataset"
