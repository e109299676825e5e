"""The per-input label search on synthetic metrics whose optimum is known: it finds it, and its pruning never
throws the optimum away."""

from __future__ import annotations

import asyncio
import random

import pytest

from lmtune.hag.search import SearchSettings, search_input, simplicity
from lmtune.hag.space import PARAMS, Decoding, DecodingSpace

SPACE = DecodingSpace()
GRID = SPACE.all_configs()
POSITIONS = {c: SPACE._loose_index(c) for c in GRID}


def position(config: Decoding) -> tuple[int, ...]:
    return POSITIONS[config]


def run(metric, settings=SearchSettings()):
    async def score(config: Decoding, repeat: int) -> float:
        return metric(config, repeat)
    return asyncio.run(search_input(SPACE, score, settings))


def pruned(outcome, config: Decoding) -> bool:
    dominated = set(outcome.dominated)
    return all(c in dominated for c in SPACE.coarse_neighbours(config))


@pytest.mark.parametrize("seed", range(12))
def test_the_search_finds_each_inputs_known_optimum(seed):
    """Each synthetic input has its own best config somewhere on the grid (a bowl around it, with noise that
    every config of a repeat shares: common random numbers); the label is exactly that config."""
    rng = random.Random(seed)
    target = position(rng.choice(GRID))
    weights = [rng.uniform(0.3, 2.0) for _ in PARAMS]
    noise = [rng.gauss(0, 5.0) for _ in range(10)]

    def metric(config, repeat):
        return noise[repeat] - sum(w * (a - b) ** 2 for w, a, b in zip(weights, position(config), target,
                                                                          strict=True))
    outcome = run(metric)
    best = max(GRID, key=lambda c: metric(c, 0))
    assert outcome.label == best and sum(metric(c, 0) == metric(best, 0) for c in GRID) == 1
    assert len(outcome.scores) <= SearchSettings().max_configs < len(GRID) / 10  # far fewer than the whole grid


@pytest.mark.parametrize("seed", range(16))
def test_pruning_never_discards_the_optimum_on_a_monotone_toy(seed):
    """A metric that only rises (or only falls) along each hyperparameter's grid order: the optimum is a corner
    of the grid, never inside a pruned region, and it is the label."""
    rng = random.Random(seed)
    signs = [rng.choice((-1, 1)) for _ in PARAMS]
    weights = [rng.uniform(0.1, 2.0) for _ in PARAMS]

    def metric(config, repeat):
        return sum(s * w * i for s, w, i in zip(signs, weights, position(config), strict=True))
    outcome = run(metric)
    values = {c: metric(c, 0) for c in GRID}
    best = max(values.values())
    optima = [c for c in GRID if values[c] == best]
    assert not any(pruned(outcome, c) for c in optima)
    assert not any(values[c] >= best for c in GRID if pruned(outcome, c))
    assert outcome.label in optima and outcome.dominated


def test_ties_go_to_the_least_random_config():
    """An input decoding cannot change (every config scores the same) gets the simplest label, greedy."""
    outcome = run(lambda config, repeat: 1.0)
    assert outcome.label == min(outcome.scores, key=simplicity) == Decoding(0.0, 1.0, 0, 1.0)
    near = run(lambda config, repeat: 1.0 - 0.001 * config.temperature,
               SearchSettings(tie_tolerance=0.01))
    assert near.label.greedy


def test_every_request_of_a_step_goes_out_at_once():
    """The coarse sweep asks for all its configs together, so a local model decodes them as one batch."""
    in_flight, peak = 0, 0

    async def score(config, repeat):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        in_flight -= 1
        return config.temperature

    outcome = asyncio.run(search_input(SPACE, score, SearchSettings()))
    assert peak == len(SPACE.coarse_configs()) and outcome.label.temperature == 2.0
