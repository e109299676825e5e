"""``lmtune hag evaluate`` on the committed hag-lm: every method scored on the same fresh draws, the oracle as the
best of them on each input (so that nothing exceeds it), the gap share, the per-input share, stage 1's cost, and
the files it writes."""

from __future__ import annotations

import json

from lmtune.hag.evaluate import evaluate_hag
from lmtune.hag.labels import label_task, read_labels
from lmtune.hag.learners import train_hag
from lmtune.hag.space import Decoding

SMALL = dict(temperature_grid=[0.0, 1.0], top_p_grid=[1.0], top_k_grid=[0], repetition_penalty_grid=[1.0, 1.5],
             repeats=2, task_size=30, n=4, max_tokens=8, chunk_size=6, limit=6, split="test")
GLOBAL = Decoding(1.0, 1.0, 0, 1.0)


def test_every_method_is_scored_and_none_exceeds_the_oracle(tmp_path):
    label_task(**SMALL, output_dir=tmp_path, storage=f"sqlite:///{tmp_path / 'l.db'}")
    labels = tmp_path / "labels-test.jsonl"
    (tmp_path / "infer.json").write_text(json.dumps({  # as lmtune infer writes it, on the labels' task and metric
        "task": "hag-mix", "metric": "lmtune.hag.task:mix_metric", "best": {"config": {
            "model": "hag-lm", "template": "{prompt}", "stop": None, "max_tokens": 8, "n": 4, **GLOBAL.as_dict()}}}))
    for seed in (0, 1):  # a head trained on these very labels: the mechanics, not a claim about held-out inputs
        train_hag(labels=labels, output=tmp_path / f"head{seed}", learner="head", seed=seed,
                  global_config=tmp_path / "infer.json")
    result = evaluate_hag(labels=labels, learners=[tmp_path / "head0", tmp_path / "head1"], random_seeds=2,
                          repeats=2, global_config=tmp_path / "infer.json", output_dir=tmp_path / "eval")
    methods = {m["method"]: m for m in result.methods}
    assert list(methods) == ["default", "greedy", "global", "random", "labels", "head", "head+guard", "oracle"]
    assert methods["random"]["seeds"] == 2 and methods["head"]["seeds"] == 2 and methods["oracle"]["seeds"] == 1
    assert result.inputs == 6 and result.repeats == 2
    # global is the API default here, scored on the same seeded draws: the same per-input scores
    assert methods["global"]["score"] == methods["default"]["score"]
    oracle = methods["oracle"]
    for method in methods.values():  # the oracle is the best config of each input on these draws
        assert method["score"] <= oracle["score"] + 1e-12
        assert all(method["by_type"][t] <= oracle["by_type"][t] + 1e-12 for t in oracle["by_type"])
    shares = {kind: m["per_input_share"] for kind, m in methods.items()}
    assert shares["default"] == shares["global"] == 0.0 and shares["random"] == 1.0
    assert 0.0 <= shares["head+guard"] <= shares["head"] <= 1.0  # the guard only takes per-input configs away
    gap = result.gap
    assert abs(gap["gap"] - (gap["oracle"] - gap["global"])) < 1e-12 and gap["gap"] >= 0
    if gap["gap"] > 0:
        assert abs(oracle["gap_share"] - 1.0) < 1e-12 and abs(methods["global"]["gap_share"]) < 1e-12
    stage1 = result.stage1["head"]
    assert stage1["completion_tokens_per_input"] == 0 and sum(stage1["statuses"].values()) == 12
    assert set(stage1["statuses"]) <= {"chosen", "global"}
    assert stage1["prompt_tokens_per_input"] > 0 and stage1["seconds_per_input"] > 0
    assert result.stage2["responses_per_input"] == 4 and result.stage2["completion_tokens_per_input"] > 0
    written = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert written["methods"] == json.loads(json.dumps(result.methods))
    table = (tmp_path / "eval" / "evaluation.md").read_text()
    assert "per-input oracle" in table and "stage 1: head" in table and "per-input |" in table
    assert len(read_labels(labels)[1]) == 6
