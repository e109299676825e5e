"""The guard: a learner's choice is used only where its predicted gain over the global config passes a margin
calibrated on inputs it never trained on; everywhere else the input gets the global config."""

from __future__ import annotations

import json

import pytest

from lmtune.hag.generation import HagModel, TwoStageGenerator
from lmtune.hag.guard import calibrate, out_of_fold
from lmtune.hag.head import Neighbours, Standardize, hidden_features, save_predictor
from lmtune.hag.space import Decoding, DecodingSpace
from lmtune.llm import HAG_LM_DIR

GLOBAL = Decoding(1.0, 0.9, 4, 1.0)
GREEDY = Decoding(0.0, 1.0, 0, 1.0)
HOT = Decoding(1.5, 1.0, 0, 2.0)


def test_the_margin_is_the_threshold_with_the_largest_guarded_gain():
    gains = [0.5, 0.3, 0.1, 0.05]
    realized = [0.4, 0.2, -0.3, -0.2]  # the two smallest predicted gains were losses
    guard = calibrate(gains, realized)
    assert guard.margin == 0.1 and guard.gain == pytest.approx(0.15) and guard.share == 0.5
    assert guard.unguarded_gain == pytest.approx(0.025) and guard.unguarded_share == 1.0
    assert guard.allows(0.3) and not guard.allows(0.1) and not guard.allows(0.02)


def test_ties_go_to_the_larger_margin_and_no_gain_means_always_the_global_config():
    assert calibrate([0.4, 0.2], [0.3, 0.0]).margin == 0.2  # 0 and 0.2 both gain 0.15: fewer own configs
    never = calibrate([0.4, 0.2, 0.1], [-0.1, -0.2, 0.0])
    assert never.margin is None and never.gain == 0.0 and not never.allows(10.0)
    assert never.unguarded_gain == pytest.approx(-0.1)


def test_out_of_fold_predictions_never_come_from_a_fit_that_saw_the_input():
    import torch

    features = torch.arange(10.0).unsqueeze(1)
    margins = torch.zeros(10, 2)
    margins[:, 1] = torch.arange(10.0) / 10  # the measured margin of candidate 1 on input i is i / 10

    def fit(x, y):  # predicts candidate 1's margin as -1 on the inputs it was fitted on, +1 elsewhere
        seen = {float(v) for v in x[:, 0]}
        return lambda q: torch.tensor([[0.0, -1.0 if float(v) in seen else 1.0] for v in q[:, 0]])
    gains, realized = out_of_fold(fit, features, margins, seed=0)
    assert gains == [1.0] * 10  # candidate 1 at +1 for every input: none was in its own fit
    assert realized == pytest.approx([i / 10 for i in range(10)])  # and its measured margin is what counts


@pytest.fixture(scope="module")
def constructed(tmp_path_factory):
    """A neighbours HAG model folder written by hand: each of two prompts is its own nearest training input, one
    with a small predicted gain (0.05 for greedy), one with a large one (0.6 for hot decoding); the margin is 0.1."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("guard") / "neighbours"
    folder.mkdir()
    prompts = ["r:abcdef>", "d:4-qx>"]
    model = AutoModelForCausalLM.from_pretrained(HAG_LM_DIR).eval()
    features, _ = hidden_features(model, AutoTokenizer.from_pretrained(HAG_LM_DIR), prompts, "mean", "cpu")
    margins = torch.tensor([[0.05, -0.2], [-0.5, 0.6]])
    save_predictor(Neighbours(features, margins, Standardize.fit(features), k=1), folder / "neighbours.safetensors")
    meta = {"learner": "neighbours", "base_model": str(HAG_LM_DIR), "instruction": "{input}",
            "space": DecodingSpace().to_dict(), "fallback": GLOBAL.as_dict(),
            "predictor": {"pooling": "mean", "neighbours": 1, "candidates": [GREEDY.as_dict(), HOT.as_dict()]},
            "guard": {"margin": 0.1}}
    (folder / "hag.json").write_text(json.dumps(meta))
    return folder, prompts


def test_a_gain_below_the_margin_gets_the_global_config(constructed):
    folder, prompts = constructed
    small, large = HagModel(folder).choose(prompts)
    assert small.gain == pytest.approx(0.05) and small.status == "global" and small.config == GLOBAL
    assert small.unguarded == GREEDY  # without the guard it would leave the global config
    assert large.gain == pytest.approx(0.6) and large.status == "chosen" and large.config == HOT


def test_a_served_answer_says_whether_the_guard_kept_the_global_config(constructed):
    folder, prompts = constructed
    chosen = TwoStageGenerator(folder).answer(prompts[0], n=2, max_tokens=8, seed=0).hyperparameters
    assert chosen["status"] == "global" and chosen["temperature"] == GLOBAL.temperature
    assert chosen["learner"] == "neighbours" and chosen["stage1"]["completion_tokens"] == 0
