"""``lmtune hag label`` on the committed hag-lm: labels, their cost, resume after an interrupt, the response cache,
and a JSONL task with a user metric."""

from __future__ import annotations

import json

import optuna
import pytest

from lmtune.hag.labels import label_task, read_labels
from lmtune.runtime.loop import Interrupted, TrialListener

SMALL = dict(temperature_grid=[0.0, 1.0], top_p_grid=[1.0], top_k_grid=[0], repetition_penalty_grid=[1.0, 1.5],
             repeats=2, task_size=30, n=4, max_tokens=8, chunk_size=2, limit=4)


def same_answer(instance: dict, responses: list[str]) -> float:
    """A user metric: 1 when every response is the same (greedy decoding always gets it)."""
    return float(len(set(responses)) == 1)


class StopAfterFirst(TrialListener):
    def trial_done(self, study, trial):
        raise KeyboardInterrupt


def test_labels_resume_after_an_interrupt_without_paying_twice(tmp_path):
    common = dict(SMALL, storage=f"sqlite:///{tmp_path / 'l.db'}", output_dir=tmp_path, split="validation")
    with pytest.raises(Interrupted):
        label_task(**common, listener=StopAfterFirst())
    header, first = read_labels(tmp_path / "labels-validation.jsonl")
    assert len(first) == 2 and header["split"] == "validation" and header["inputs"] == 4
    result = label_task(**common)
    header, rows = read_labels(tmp_path / "labels-validation.jsonl")
    assert [r["index"] for r in rows] == [0, 1, 2, 3] and rows[:2] == first
    assert result.labelled == 4 and result.failed_chunks == 0
    assert result.budget["cached_requests"] == 0  # the second run asked only for the second chunk's requests
    assert result.budget["requests"] == sum(r["requests"] for r in rows)
    assert result.budget["responses"] == 4 * result.budget["requests"]  # n = 4 per request
    study = optuna.load_study(study_name="hag-label-hag-mix-validation", storage=common["storage"])
    assert sorted(t.params["chunk"] for t in study.trials if t.state.name == "COMPLETE") == [0, 1]
    for row in rows:  # every label is the best mean among the configs scored at full repeats
        full = {json.dumps(c): sum(v) / len(v) for c, v in row["scores"] if len(v) == 2}
        assert row["score"] == max(full.values())
    again = label_task(**common)  # finished: nothing runs
    assert again.budget == result.budget


def test_a_fresh_study_on_the_same_cache_gets_the_same_labels_for_free(tmp_path):
    common = dict(SMALL, output_dir=tmp_path, cache=str(tmp_path / "cache.sqlite"), limit=2)
    first = label_task(**common, storage=f"sqlite:///{tmp_path / 'a.db'}")
    rows = read_labels(tmp_path / "labels-train.jsonl")[1]
    second = label_task(**common, storage=f"sqlite:///{tmp_path / 'b.db'}")
    assert read_labels(tmp_path / "labels-train.jsonl")[1] == rows
    assert second.budget["requests"] == 0 and second.budget["cached_requests"] == first.budget["requests"]


def test_a_jsonl_task_with_a_user_metric(tmp_path):
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"q": f"c:{w}>"}) + "\n" for w in ("abc", "kqz", "mmo", "xyzzy", "pq", "rst")))
    result = label_task(**dict(SMALL, limit=None), task=str(task), metric="tests.hag.test_labels:same_answer",
                        template="{q}", validation_fraction=0.2, test_fraction=0.2, output_dir=tmp_path,
                        storage=f"sqlite:///{tmp_path / 'j.db'}")
    header, rows = read_labels(tmp_path / "labels-train.jsonl")
    assert header["metric"] == "tests.hag.test_labels:same_answer" and header["template"] == "{q}"
    assert result.labelled == len(rows) == 4
    assert all(r["label"]["temperature"] == 0.0 and r["score"] == 1.0 for r in rows)  # greedy always agrees
