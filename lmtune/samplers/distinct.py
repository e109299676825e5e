"""Any Optuna sampler, made to never propose a config of a discrete pool that a trial already holds.

An expensive trial must not repeat a finished or running config. Optuna's samplers may: random and TPE draw
independently per parameter, GP and BoTorch can return the incumbent again, and every worker or resumed run
seeded the same way replays the same draws. ``DistinctSampler`` asks its base sampler for a whole config,
accepts it only if no trial holds it (finished, running, queued, or just claimed by another worker:
``lmtune.samplers.claim``), asks again a few times, and otherwise draws uniformly among the free configs.

The base sampler is built anew for every trial with a seed derived from the study seed and the trial number,
so runs are reproducible and workers (and resumed runs) draw differently: trial numbers are unique.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from lmtune import attrs
from lmtune._compat import queued_params
from lmtune.samplers.claim import PoolClaims
from lmtune.space import SearchSpace

#: Whole configs asked of the base sampler before a uniform draw among the free ones.
ATTEMPTS = 4

log = logging.getLogger(__name__)


def trial_seed(seed: int | None, number: int) -> int:
    """A seed for one trial: the same for the same (study seed, trial number), different across trials."""
    return int(np.random.SeedSequence([0 if seed is None else seed, number, 0 if seed is not None else 1])
               .generate_state(1)[0])


class DistinctSampler(BaseSampler):
    """Wraps ``make_base(seed) -> sampler`` so that proposals on ``space``'s discrete pool never repeat.

    With a ``seed`` of None the run is not reproducible (a fresh random root is drawn once).
    """

    def __init__(self, make_base: Callable[[int], BaseSampler], space: SearchSpace, *, seed: int | None = None,
                 attempts: int = ATTEMPTS):
        if not space.is_discrete:
            raise ValueError("DistinctSampler needs a discrete space (a finite pool)")
        self.make_base = make_base
        self.space = space
        self.attempts = attempts
        self._seed = seed if seed is not None else int(np.random.SeedSequence().generate_state(1)[0])
        self._claims = PoolClaims(space, key=attrs.DISTINCT_CLAIM)  # language-BO keeps its own
        self._bases: dict[int, BaseSampler] = {}

    def _base(self, trial: FrozenTrial) -> BaseSampler:
        if trial.number not in self._bases:
            self._bases[trial.number] = self.make_base(trial_seed(self._seed, trial.number))
        return self._bases[trial.number]

    # -- Optuna sampler interface -------------------------------------------------------------
    def reseed_rng(self) -> None:
        self._seed = int(np.random.SeedSequence().generate_state(1)[0])

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._base(trial).before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values) -> None:
        base = self._bases.pop(trial.number, None)
        if base is not None:
            base.after_trial(study, trial, state, values)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.space.distributions()

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space or set(search_space) <= set(queued_params(trial) or {}):
            return {}  # a queued trial (a retry) keeps the parameters it was given
        base = self._base(trial)
        others = [t for t in study.get_trials(deepcopy=False)
                  if t.number != trial.number and not t.user_attrs.get(attrs.BUDGET_REACHED)]
        taken = {i for i in map(self._claims.holds, others) if i is not None}
        for _ in range(self.attempts):
            index = self.space.pool_index(self._propose(base, study, trial))
            if index is None or index in taken:
                continue
            if self._claims.claim(study, trial, index):
                return self.space.pool_config(index)
            taken.add(index)  # another worker chose it at the same moment
        rng = np.random.default_rng(trial_seed(self._seed, trial.number))
        while True:
            free = np.setdiff1d(np.arange(self.space.pool_size), np.fromiter(taken, dtype=np.int64))
            if free.size == 0:
                log.warning("every one of the %d configs of the pool is taken; trial %d repeats one",
                            self.space.pool_size, trial.number)
                return self.space.pool_config(int(rng.integers(self.space.pool_size)))
            index = int(rng.choice(free))
            if self._claims.claim(study, trial, index):
                return self.space.pool_config(index)
            taken.add(index)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        """Parameters outside the space are the base sampler's."""
        return self._base(trial).sample_independent(study, trial, param_name, param_distribution)

    def _propose(self, base: BaseSampler, study: Study, trial: FrozenTrial) -> dict[str, Any]:
        """A whole config from the base sampler: its joint proposal, then its own draw for the other parameters."""
        relative = base.infer_relative_search_space(study, trial)
        params = dict(base.sample_relative(study, trial, relative)) if relative else {}
        for name, distribution in self.space.distributions().items():
            if name not in params:
                params[name] = base.sample_independent(study, trial, name, distribution)
        return params

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_bases": {}}
