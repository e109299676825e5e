"""The built-in per-input tasks: hag-mix's instances as they were, hag-spread's instances and its metric."""

from __future__ import annotations

import pytest

from lmtune.config import import_function
from lmtune.errors import InputError
from lmtune.hag.task import (
    all_correct,
    load_hag_task,
    make_set_metric,
    metric_path,
    mix_instances,
    spread_instances,
    spread_metric,
)


def test_hag_mix_instances_are_those_its_labels_were_made_of():
    assert [r["prompt"] for r in mix_instances(6, 0)] == ["r:inab>", "d:4-cq>", "c:mfkdeh>", "r:nxjvmiea>", "d:3-z>",
                                                          "c:ah>"]


def test_hag_spread_alternates_short_copies_and_letters_seeded_and_distinct():
    rows = spread_instances(200, seed=3)
    assert rows == spread_instances(200, seed=3) and rows != spread_instances(200, seed=4)
    assert [r["type"] for r in rows[:4]] == ["copy", "letters", "copy", "letters"]
    assert all(len(r["answer"]) in (3, 4) and r["prompt"] == f"c:{r['answer']}>" for r in rows if r["type"] == "copy")
    assert len({r["prompt"] for r in rows}) == 200
    task = load_hag_task("hag-spread", size=20, seed=0)
    assert task.metric_name == "lmtune.hag.task:spread_metric" and len(task.instances) == 20


def test_hag_spread_metric_asks_every_copy_to_be_right_and_letters_to_differ():
    copy = {"type": "copy", "prompt": "c:abc>", "answer": "abc"}
    assert spread_metric(copy, ["abc", " abc", "abc\n", "abc"]) == 1.0
    assert spread_metric(copy, ["abc", "abc", "abd", "abc"]) == 0.0  # one wrong response of n: no credit
    assert all_correct(copy, ["abc"] * 8) == 1.0
    letters = {"type": "letters", "prompt": "d:3-q>", "answer": None, "count": 3, "forbidden": "q"}
    assert spread_metric(letters, ["eta", "eta", "tao", "qet"]) == 0.5  # 2 distinct valid of 4 ("qet" is forbidden)
    assert spread_metric(letters, ["eta"] * 4) == 0.25
    with pytest.raises(ValueError, match="unknown hag-spread instance type"):
        spread_metric({"type": "reverse", "answer": "a"}, ["a"])


def test_a_metric_as_lmtune_infer_imports_it():
    assert metric_path("spread") == "lmtune.hag.task:spread_metric" and metric_path("all").endswith(":all_correct")
    assert metric_path("my.module:score") == "my.module:score"
    assert import_function(metric_path("spread"), "metric") is spread_metric is make_set_metric("spread")
    with pytest.raises(InputError, match="allowed: exact, all, vote, mix, spread"):
        make_set_metric("distinct")
