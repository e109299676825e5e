"""What the head and neighbours learn from: each candidate's measured margin over the global config, where the
candidates are the configs the label search scored on every training input."""

from __future__ import annotations

import pytest

from lmtune.hag.guard import candidates_and_margins
from lmtune.hag.space import Decoding

GREEDY = Decoding(0.0, 1.0, 0, 1.0)
HOT = Decoding(1.5, 0.9, 0, 1.35)
WARM = Decoding(1.0, 1.0, 0, 1.0)
REFINED = Decoding(1.25, 0.9, 0, 1.35)


def row(label: Decoding, scores: dict[Decoding, list[float]]) -> dict:
    return {"prompt": "x", "label": label.as_dict(), "score": sum(scores.get(label, [1.0])) / 3,
            "scores": [[c.as_dict(), v] for c, v in scores.items()]}


def test_candidates_are_the_configs_every_input_scored_and_targets_their_margins():
    rows = [row(GREEDY, {GREEDY: [1, 1, 1], HOT: [0.5], WARM: [0.75]}),
            row(REFINED, {GREEDY: [0.0], HOT: [1, 0.5, 1], WARM: [0.5], REFINED: [1, 1, 1]}),
            row(GREEDY, {GREEDY: [1, 1, 1], HOT: [0.25], WARM: [0.5]})]
    candidates, margins = candidates_and_margins(rows, reference=[0.75, 0.5, 0.5])
    assert candidates == [GREEDY, WARM, HOT]  # REFINED was scored on one input only; least random first
    assert margins[0] == [0.25, 0.0, -0.25]
    assert margins[1] == pytest.approx([-0.5, 0.0, 2.5 / 3 - 0.5])
