"""The per-input label search: a coarse sweep, pruning of dominated regions, greedy coordinate refinement.

This is the search "LLM can Achieve Self-Regulation via Hyperparameter Aware Generation" (arXiv:2402.11251)
describes for its training labels; the paper gives neither its grids nor its rules, so lmtune's are:

1. **Coarse sweep.** Every coarse config (a few evenly spread grid values of each hyperparameter, both ends
   included: ``space.COARSE_LEVELS``) is scored with ``coarse_repeats`` seeded requests of n responses.
2. **Pruning.** Coarse configs outside the best ``keep`` share (at least two kept; ties by rank go to the least
   random, as below) are dominated. A grid config lies in a dominated region when every coarse config around it
   (its own value if coarse, else the coarse values either side, per hyperparameter) is dominated; refinement
   never goes there.
3. **Refinement.** The kept coarse configs are scored up to ``repeats`` requests; from the best one, greedy
   coordinate ascent: for each hyperparameter in turn, step one grid value up (then down) while the mean score
   rises, skipping dominated regions, until a full pass changes nothing or ``max_configs`` configs were scored.
   Greedy decoding has no nucleus or top-k, so a step from it to a temperature above 0 takes them from the best
   sampling config scored so far.
4. **The label** is the best mean among configs scored ``repeats`` times; configs within ``tie_tolerance`` of
   it are tied, and the tie goes to the least random (lowest temperature, then no repetition penalty, no
   nucleus cut, no top-k cut), so inputs that decoding does not affect all get the same, simplest label.

Every request of repeat r of an input uses the same seed whatever the config (common random numbers), so two
configs are compared on the same random draws and their difference is far less noisy than each score.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from lmtune.hag.space import PARAMS, Decoding, DecodingSpace

#: ``score(config, repeat)``: the metric of one seeded request of n responses.
Scorer = Callable[[Decoding, int], Awaitable[float]]


@dataclass(frozen=True)
class SearchSettings:
    coarse_repeats: int = 1
    repeats: int = 3
    keep: float = 0.25
    max_configs: int = 60
    tie_tolerance: float = 0.0


@dataclass
class SearchOutcome:
    """The label of one input and everything scored on the way (config -> score per repeat)."""

    label: Decoding
    score: float
    scores: dict[Decoding, list[float]]
    dominated: list[Decoding]
    requests: int = 0
    refinement_steps: int = 0
    trace: list[str] = field(default_factory=list)

    def mean(self, config: Decoding) -> float:
        values = self.scores[config]
        return sum(values) / len(values)


def simplicity(config: Decoding) -> tuple:
    """Sort key: the least random decoding first (ties of the label go to it)."""
    return (config.temperature, config.repetition_penalty, -config.top_p, config.top_k == 0, -config.top_k)


async def search_input(space: DecodingSpace, score: Scorer, settings: SearchSettings) -> SearchOutcome:
    """Find the label of one input (see the module docstring); all requests of one step go out together."""
    scores: dict[Decoding, list[float]] = {}
    outcome = SearchOutcome(label=Decoding(), score=-math.inf, scores=scores, dominated=[])

    async def bring(configs: list[Decoding], repeats: int) -> None:
        jobs = [(c, r) for c in configs for r in range(len(scores.get(c, [])), repeats)]
        values = await asyncio.gather(*(score(c, r) for c, r in jobs))
        for (config, _), value in zip(jobs, values, strict=True):
            scores.setdefault(config, []).append(float(value))
        outcome.requests += len(jobs)

    def mean(config: Decoding) -> float:
        return sum(scores[config]) / len(scores[config])

    coarse = space.coarse_configs()
    await bring(coarse, settings.coarse_repeats)
    ranked = sorted(coarse, key=lambda c: (-mean(c), simplicity(c)))
    keep = min(len(ranked), max(2, math.ceil(settings.keep * len(ranked))))
    kept, outcome.dominated = ranked[:keep], ranked[keep:]
    dominated = set(outcome.dominated)
    await bring(kept, settings.repeats)
    current = min(kept, key=lambda c: (-mean(c), simplicity(c)))
    outcome.trace.append(f"coarse {len(coarse)}, kept {len(kept)}, start {current.text()} {mean(current):.4f}")

    def allowed(config: Decoding | None) -> bool:
        if config is None:
            return False
        return not all(c in dominated for c in space.coarse_neighbours(config))

    changed = True
    while changed and len(scores) < settings.max_configs:
        changed = False
        for name in PARAMS:
            for direction in (1, -1):
                while len(scores) < settings.max_configs:
                    candidate = space.step(current, name, direction)
                    if current.greedy and candidate is not None and not candidate.greedy:
                        # greedy has no nucleus or top-k: leaving it takes them from the best sampling config
                        sampling = [c for c in scores if not c.greedy and len(scores[c]) >= settings.repeats]
                        if sampling:
                            model = min(sampling, key=lambda c: (-mean(c), simplicity(c)))
                            candidate = replace(candidate, top_p=model.top_p, top_k=model.top_k)
                    if candidate == current or not allowed(candidate):
                        break
                    await bring([candidate], settings.repeats)
                    if mean(candidate) <= mean(current):
                        break
                    current, changed = candidate, True
                    outcome.refinement_steps += 1
                    outcome.trace.append(f"{name} -> {candidate.text()} {mean(candidate):.4f}")
    full = [c for c, values in scores.items() if len(values) >= settings.repeats]
    best = max(mean(c) for c in full)
    tied = [c for c in full if mean(c) >= best - settings.tie_tolerance]
    outcome.label = min(tied, key=simplicity)
    outcome.score = mean(outcome.label)
    return outcome
