"""``lmtune hag`` bad input: one line ``error: <field>: ...``, exit code 2, nothing written."""

from __future__ import annotations

import json

import pytest

from lmtune.hag.space import DecodingSpace
from tests.cli.test_bad_input import run, snapshot

HEADER = {"lmtune_hag_labels": {"task": "hag-mix", "metric": "lmtune.hag.task:mix_metric", "template": "{prompt}",
                                "n": 4, "max_tokens": 8, "stop": None, "split": "test", "model": "hag-lm",
                                "space": DecodingSpace().to_dict()}}
ROW = {"index": 0, "prompt": "r:abc>", "instance": {"type": "reverse", "prompt": "r:abc>", "answer": "cba"},
       "label": {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}, "text": "", "score": 1.0}
LABELS = json.dumps(HEADER) + "\n" + json.dumps(ROW) + "\n"
BEST = {"best": {"config": {"temperature": 0.5, "top_p": 0.9}}}
#: lmtune infer's results of another task (arith-add3), and of the labels' task with another metric
OTHER_TASK = json.dumps({"task": "arith-add3", "metric": "success", **BEST})
OTHER_METRIC = json.dumps({"task": "hag-mix", "metric": "exact", **BEST})
HEADLESS = json.dumps({"learner": "head", "base_model": "hag-lm", "instruction": "{input}",
                       "space": DecodingSpace().to_dict(), "fallback": ROW["label"],
                       "predictor": {"pooling": "mean", "candidates": [ROW["label"]]}, "guard": {"margin": None}})

#: (case, files to write, arguments, field named, words in the message)
CASES = [
    ("unknown task", {}, ["hag", "label", "--task", "nope", "--storage", "sqlite:///s.db"], "task", "unknown task"),
    ("a task file without a metric", {"t.jsonl": '{"prompt": "a"}\n' * 4},
     ["hag", "label", "--task", "t.jsonl", "--storage", "sqlite:///s.db"], "metric", "needs a metric"),
    ("a metric that does not import", {}, ["hag", "label", "--metric", "nowhere:f", "--storage", "sqlite:///s.db"],
     "metric", "cannot import"),
    ("a model that is not there", {}, ["hag", "label", "--model", "missing-folder", "--storage", "sqlite:///s.db"],
     "model", "not a model folder"),
    ("a top_p above 1", {}, ["hag", "label", "--top-p-grid", "0.5,1.5", "--storage", "sqlite:///s.db"],
     "top_p_grid", "<= 1"),
    ("an empty label file", {"empty.jsonl": ""}, ["hag", "train", "--labels", "empty.jsonl", "--output", "out"],
     "labels", "is empty"),
    ("a label file without labels", {"l.jsonl": json.dumps(HEADER) + "\n"},
     ["hag", "train", "--labels", "l.jsonl", "--output", "out"], "labels", "holds no labels"),
    ("a model folder without a head", {"l.jsonl": LABELS, "m/hag.json": HEADLESS},
     ["hag", "evaluate", "--labels", "l.jsonl", "--learners", "m", "--output-dir", "out"], "learners", "has no head"),
    ("a folder that is no HAG model", {"l.jsonl": LABELS, "plain/config.json": "{}"},
     ["hag", "evaluate", "--labels", "l.jsonl", "--learners", "plain", "--output-dir", "out"], "learners",
     "not a HAG model folder"),
    ("a global config of another task", {"l.jsonl": LABELS, "infer.json": OTHER_TASK},
     ["hag", "evaluate", "--labels", "l.jsonl", "--global-config", "infer.json", "--output-dir", "out"],
     "global_config", "was tuned on task 'arith-add3' with metric 'success', but the labels are of task 'hag-mix'"),
    ("a global config of another metric", {"l.jsonl": LABELS, "infer.json": OTHER_METRIC},
     ["hag", "train", "--labels", "l.jsonl", "--global-config", "infer.json", "--output", "out"], "global_config",
     "with metric 'exact', but the labels are of task 'hag-mix' with metric 'lmtune.hag.task:mix_metric'"),
    ("a global config that is no results.json", {"l.jsonl": LABELS, "infer.json": "[1, 2]"},
     ["hag", "evaluate", "--labels", "l.jsonl", "--global-config", "infer.json", "--output-dir", "out"],
     "global_config", "is not a results.json"),
    ("a global search without a budget", {"l.jsonl": LABELS},
     ["hag", "global", "--labels", "l.jsonl", "--storage", "sqlite:///s.db"], "budget_tokens", "label-test.json"),
    ("serving a folder without a head", {"m/hag.json": HEADLESS}, ["serve", "--model", "m"], "model", "has no head"),
]


@pytest.mark.parametrize(("case", "files", "args", "field", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, files, args, field, words, tmp_path, capsys,
                                                          monkeypatch):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    before = snapshot(tmp_path)
    code, err = run(tmp_path, args, capsys, monkeypatch)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}: ") and words in lines[0], err
    assert snapshot(tmp_path) == before
