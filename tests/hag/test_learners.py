"""What the predictor head learns from: every candidate's measured score, or one-hot labels without scores."""

from __future__ import annotations

from lmtune.hag.learners import score_targets
from lmtune.hag.space import Decoding

GREEDY = Decoding(0.0, 1.0, 0, 1.0)
HOT = Decoding(1.5, 0.9, 0, 1.35)
WARM = Decoding(1.0, 1.0, 0, 1.0)
REFINED = Decoding(1.25, 0.9, 0, 1.35)


def row(label: Decoding, scores: dict[Decoding, list[float]]) -> dict:
    return {"prompt": "x", "label": label.as_dict(), "score": sum(scores.get(label, [1.0])) / 3,
            "scores": [[c.as_dict(), v] for c, v in scores.items()]}


def test_candidates_are_the_labels_and_the_configs_every_input_scored():
    rows = [row(GREEDY, {GREEDY: [1, 1, 1], HOT: [0.5], WARM: [0.75]}),
            row(REFINED, {GREEDY: [0.0], HOT: [1, 0.5, 1], WARM: [0.5], REFINED: [1, 1, 1]}),
            row(GREEDY, {GREEDY: [1, 1, 1], HOT: [0.25], WARM: [0.5]})]
    candidates, targets = score_targets(rows)
    assert candidates == [GREEDY, REFINED, WARM, HOT]  # labels by frequency, then shared configs, least random first
    assert targets[0] == [1.0, None, 0.75, 0.5]  # REFINED was not measured on the first input: masked
    assert targets[1] == [0.0, 1.0, 0.5, 2.5 / 3]


def test_rows_without_search_scores_give_one_hot_targets():
    rows = [{"prompt": "a", "label": GREEDY.as_dict(), "score": 1.0, "scores": []},
            {"prompt": "b", "label": HOT.as_dict(), "score": 0.5, "scores": []}]
    candidates, targets = score_targets(rows)
    assert candidates == [GREEDY, HOT]
    assert targets == [[1.0, 0.0], [0.0, 0.5]]
