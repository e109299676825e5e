"""Evaluating one inference config the EcoOptiGen way: more responses and more data only while it may still fit.

For a config with n responses and max_tokens m, responses are fetched for a growing prefix of the (seeded,
shuffled) tuning instances, with n doubling (1, 2, 4, ..., n) and earlier responses reused. After each step the
mean cost per instance at the full n is estimated (prompt once, completions scaled to n) with a
Hoeffding-Serfling bound over the prefix; the config is pruned as soon as the bound says it is over the
per-instance budget, and checks stop as soon as it says it is under. Only a config that gets all n responses
on every instance and whose exact mean cost fits is scored; everything else is infeasible, never a zero score.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from lmtune.inference.metrics import InstanceMetric
from lmtune.inference.pruning import PruningKnowledge
from lmtune.inference.space import InferencePoint
from lmtune.inference.spend import MeteredGenerator
from lmtune.inference.tasks import InferTask
from lmtune.llm.generation import BackgroundLoop, GenerationRequest


@dataclass
class Evaluation:
    feasible: bool
    quality: float | None
    cost_per_instance: float | None  # exact on all instances when feasible, else the estimate that pruned it
    instances: int  # how many instances got responses
    reason: str = ""
    inferred: bool = False  # pruned from earlier knowledge without a single call


@dataclass
class _Responses:
    """An instance's responses so far, with the tokens of each batch (prompt billed once per batch)."""

    texts: list[str] = field(default_factory=list)
    completion_tokens: list[float] = field(default_factory=list)  # per response (batch average)
    prompt_tokens: int = 0


def doubling(n: int) -> list[int]:
    steps, k = [], 1
    while k < n:
        steps.append(k)
        k *= 2
    return steps + [n]


def hoeffding_serfling(value_range: float, k: int, population: int, delta: float) -> float:
    """One-sided deviation of a mean of k draws without replacement from ``population`` values in a range."""
    if k >= population:
        return 0.0
    rho = 1.0 - (k - 1) / population
    return value_range * math.sqrt(rho * math.log(1.0 / delta) / (2.0 * k))


class Evaluator:
    """Evaluates configs on a fixed instance list with one metered generator, sharing pruning knowledge."""

    def __init__(self, task: InferTask, instances: list[dict], metric: InstanceMetric,
                 needs_check: bool, generator: MeteredGenerator, loop: BackgroundLoop, inference_budget: float,
                 *, pruning: bool = True, knowledge: PruningKnowledge | None = None, seed: int = 0,
                 initial_size: int = 4, delta: float = 0.1, salt: str = "tune"):
        self.task, self.instances = task, instances
        self.metric, self.needs_check = metric, needs_check
        self.generator, self.loop, self.budget = generator, loop, inference_budget
        self.pruning = pruning
        self.knowledge = knowledge if knowledge is not None else PruningKnowledge()
        self.seed, self.initial_size, self.delta, self.salt = seed, initial_size, delta, salt

    # -- one config ---------------------------------------------------------------------------------

    def evaluate(self, config: InferencePoint, on_progress: Callable[[], None] | None = None) -> Evaluation:
        """Score one config, EcoOptiGen style; ``on_progress()`` runs after every batch of calls (the tuner
        stores the trial's spend so far)."""
        total = len(self.instances)
        responses = [_Responses() for _ in self.instances]
        if self.pruning:
            status = self.knowledge.status(config.token_key, config.n, config.max_tokens)
            if status == "invalid":
                n0, m0 = self.knowledge.evidence(config.token_key, config.n, config.max_tokens)
                return Evaluation(False, None, None, 0, f"pruned: n={n0}, max_tokens={m0} was already over the "
                                  "per-instance budget", inferred=True)
            if status is None:
                early = self._screen(config, responses, on_progress)
                if early is not None:
                    return early
        self._fetch(config, responses, range(total), config.n, on_progress)
        costs = [self._cost(config, r, config.n) for r in responses]
        mean_cost = sum(costs) / total
        valid = mean_cost <= self.budget
        if self.pruning:
            self.knowledge.record(config.token_key, config.n, config.max_tokens, valid)
        if not valid:
            return Evaluation(False, None, mean_cost, total, f"over budget: mean cost per instance {mean_cost:.6g} "
                              f"> {self.budget:.6g} on all {total} instances")
        return Evaluation(True, self.quality(responses), mean_cost, total)

    def _screen(self, config: InferencePoint, responses: list[_Responses], on_progress) -> Evaluation | None:
        """Grow data and n until the cost bound decides; an Evaluation when it decides 'over budget'."""
        total = len(self.instances)
        size = min(self.initial_size, total)
        while True:
            for target in doubling(config.n):
                self._fetch(config, responses, range(size), target, on_progress)
                estimates = [self._cost(config, responses[i], config.n, used=target) for i in range(size)]
                mean = sum(estimates) / size
                spread = max(estimates) - min(estimates)
                epsilon = hoeffding_serfling(spread, size, total, self.delta)
                if mean - epsilon > self.budget:
                    self.knowledge.record(config.token_key, config.n, config.max_tokens, False)
                    return Evaluation(False, None, mean, size, f"over budget: estimated cost per instance "
                                      f"{mean:.6g} (± {epsilon:.2g}) > {self.budget:.6g} after {size} instances "
                                      f"with {target} of {config.n} responses")
                if mean + epsilon <= self.budget:
                    return None  # confidently within: get the rest without further checks
            if size >= total:
                return None
            size = min(2 * size, total)

    # -- responses and their cost --------------------------------------------------------------------

    def _fetch(self, config: InferencePoint, responses: list[_Responses], indices, target: int,
               on_progress: Callable[[], None] | None = None) -> None:
        """Bring the instances' responses up to ``target``, in the doubling batches (cache-friendly)."""
        async def one(i: int):
            have = len(responses[i].texts)
            if have >= target:
                return
            bounds = [b for b in doubling(config.n) if have < b <= target] if self.pruning else [target]
            r = responses[i]
            for upper in bounds:
                count = upper - len(r.texts)
                generation = await self.generator.generate(self.request(config, i, count, start=len(r.texts)))
                r.texts += generation.texts
                r.completion_tokens += [generation.completion_tokens / count] * count
                r.prompt_tokens = generation.prompt_tokens

        async def all_of():
            results = await asyncio.gather(*(one(i) for i in indices), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0]

        try:
            self.loop.run(all_of())
        finally:
            if on_progress is not None:
                on_progress()

    def request(self, config: InferencePoint, index: int, count: int, start: int) -> GenerationRequest:
        """The request for responses [start, start + count) of instance ``index``; its seed names that slice."""
        instance = self.instances[index]
        prompt = self.task.templates[config.template].format(**instance)
        digest = hashlib.sha256(f"{self.salt}:{self.seed}:{prompt}:{start}".encode()).hexdigest()
        return GenerationRequest(model=config.model, prompt=prompt, n=count, max_tokens=config.max_tokens,
                                 stop=self.task.stops[config.stop], seed=int(digest[:8], 16), **config.sampling())

    def _cost(self, config: InferencePoint, r: _Responses, n: int, used: int | None = None) -> float:
        """Cost of serving this instance with n responses in one call; from ``used`` responses scaled to n."""
        used = used or n
        completion = sum(r.completion_tokens[:used]) * (n / used)
        return self.generator.prices[config.model].cost(r.prompt_tokens, completion)

    def quality(self, responses: list[_Responses]) -> float:
        scores = []
        for instance, r in zip(self.instances, responses, strict=True):
            correct = [self.task.check(instance, t) for t in r.texts] if self.needs_check else []
            answers = [self.task.normalize(t) for t in r.texts]
            scores.append(self.metric(instance, r.texts, correct, answers))
        return sum(scores) / len(scores)
