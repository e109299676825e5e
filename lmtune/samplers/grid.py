"""Evaluate every config of a list once, in a seeded random order, across any number of workers.

Optuna's ``GridSampler`` walks its grid in product order for the first trials, so a table that is
half built covers half of one parameter's values. This sampler draws each next config uniformly from
the configs that no trial has taken yet, so a partial table is a uniform random sample of the grid,
and workers on other processes or machines (sharing the study's storage) spread over it by themselves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from lmtune._compat import queued_params, set_trial_system_attr
from lmtune.attrs import GRID_INDEX
from lmtune.space import config_key


class ShuffledGridSampler(BaseSampler):
    """Sample each config of ``configs`` exactly once, picking uniformly among those not yet taken.

    A config counts as taken once a trial holds it, whatever that trial's state (running trials of
    other workers included). A trial queued with fixed parameters (a retry) keeps its parameters.
    When every config is taken, `Study.optimize` stops; other loops check :meth:`untaken` before each trial.
    """

    def __init__(self, configs: Sequence[Mapping[str, Any]], seed: int | None = None):
        if not configs:
            raise ValueError("ShuffledGridSampler needs at least one config")
        self._configs = [dict(c) for c in configs]
        self._indexes: dict[tuple[str, ...], dict[str, int]] = {}
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self._configs)

    def index_of(self, params: Mapping[str, Any]) -> int | None:
        """The config that agrees with ``params`` on every name they hold, or None.

        A queued retry holds only the searched parameters, not the values every config shares.
        """
        names = tuple(sorted(params))
        if not names:
            return None
        if names not in self._indexes:
            index: dict[str, int] = {}
            for i, config in enumerate(self._configs):
                index.setdefault(config_key({name: config.get(name) for name in names}), i)
            self._indexes[names] = index
        return self._indexes[names].get(config_key(params))

    def trial_index(self, trial: FrozenTrial) -> int | None:
        """The config a trial holds: recorded when it started, else found from its queued or chosen parameters."""
        index = trial.system_attrs.get(GRID_INDEX)
        if index is None:
            index = self.index_of(queued_params(trial) or trial.params)
        return index

    def untaken(self, study: Study) -> list[int]:
        """Grid indices that no trial of the study holds yet (queued retries hold theirs)."""
        taken = {self.trial_index(t) for t in study.get_trials(deepcopy=False)}
        return [i for i in range(len(self._configs)) if i not in taken]

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        queued = queued_params(trial) or trial.params  # a retry or an enqueued config
        if queued:
            index = self.index_of(queued)
        else:
            free = self.untaken(study)
            # nothing free means other workers hold the rest: repeat one rather than invent a config
            index = int(self._rng.choice(free if free else len(self._configs)))
        if index is not None:
            set_trial_system_attr(study, trial, GRID_INDEX, index)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
                        ) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        index = trial.system_attrs.get(GRID_INDEX)
        if index is None or param_name not in self._configs[index]:
            raise ValueError(f"parameter {param_name!r} is not part of the grid's configs")
        return self._configs[index][param_name]

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
                    ) -> None:
        if not self.untaken(study):
            with contextlib.suppress(RuntimeError):  # outside Study.optimize (ask-and-tell) callers check untaken()
                study.stop()

