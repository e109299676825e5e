"""Optuna's samplers see each ordered parameter as what it is: a position on a line, not a label.

A study stores an ``Ordered`` parameter as its values (a ``CategoricalDistribution``), so trials read back the
learning rate itself. Stored so, Optuna's samplers would treat ``1e-4 < 3e-4 < 1e-3`` as three unrelated labels:
TPE counts each value apart, GPSampler and BoTorch one-hot them (BoTorch enumerates every combination per step).
``IndexedSampler`` shows its base sampler a view of the study in which every ordered parameter is its index
(``IntDistribution(0, n-1)``), and maps the index the base proposes back to the value; every other parameter
passes unchanged. The base then models the order (a GP's kernel, TPE's Parzen windows over integers).

The registry places it inside ``DistinctSampler``, which keeps the never-repeat rule over the values, and around
``ObservingSampler`` (pruned trials as observations), so ``lmtune lora``, ``lmtune worker`` and the benchmark's
replays all run this one encoding (``lmtune.samplers.registry.make_sampler``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial

from lmtune._compat import TrialsView
from lmtune.space import Ordered, SearchSpace


class IndexEncoding:
    """The index encoding of a space's ordered parameters: distributions, values and trials, both ways."""

    def __init__(self, space: SearchSpace):
        self.ordered = {p.name: p for p in space.params if isinstance(p, Ordered)}

    def encodes(self, name: str, distribution: BaseDistribution) -> bool:
        """Whether ``distribution`` is how the study stores ordered parameter ``name``."""
        param = self.ordered.get(name)
        return param is not None and distribution == param.distribution()

    def to_index_space(self, search_space: Mapping[str, BaseDistribution]) -> dict[str, BaseDistribution]:
        return {name: self.ordered[name].index_distribution() if self.encodes(name, d) else d
                for name, d in search_space.items()}

    def to_value_space(self, search_space: Mapping[str, BaseDistribution]) -> dict[str, BaseDistribution]:
        return {name: self.ordered[name].distribution() if self._indexes(name, d) else d
                for name, d in search_space.items()}

    def values(self, params: Mapping[str, Any], search_space: Mapping[str, BaseDistribution]) -> dict[str, Any]:
        """The base sampler's proposal (indices where ``search_space`` holds index distributions) as values."""
        return {name: self.ordered[name].value_at(int(v)) if self._indexes(name, search_space.get(name)) else v
                for name, v in params.items()}

    def trial(self, trial: FrozenTrial) -> FrozenTrial:
        """A copy of ``trial`` with every ordered parameter stored as its value shown as its index. A value outside
        the list (a study's space changed under it) is left out, as a parameter the trial did not sample."""
        if not any(self.encodes(name, d) for name, d in trial.distributions.items()):
            return trial
        params, distributions = {}, {}
        for name, value in trial.params.items():
            distribution = trial.distributions[name]
            if self.encodes(name, distribution):
                index = self.ordered[name].position(value)
                if index is None:
                    continue
                value, distribution = index, self.ordered[name].index_distribution()
            params[name], distributions[name] = value, distribution
        shown = copy.copy(trial)
        shown.distributions, shown.params = distributions, params
        return shown

    def view(self, study: optuna.Study) -> TrialsView:
        """The study as the base sampler sees it: every trial list passes through ``trial``."""
        return TrialsView(study, lambda trials: [self.trial(t) for t in trials])

    def _indexes(self, name: str, distribution: BaseDistribution | None) -> bool:
        param = self.ordered.get(name)
        return param is not None and distribution == param.index_distribution()


class IndexedSampler(BaseSampler):
    """Any Optuna sampler, shown each ``Ordered`` parameter of ``space`` as its index (``IndexEncoding``).

    To the study it is an ordinary sampler over the values: its relative search space and its proposals are in
    the study's distributions. Writes (``before_trial``, ``after_trial``) go to the study itself.
    """

    def __init__(self, base: BaseSampler, space: SearchSpace):
        self.base = base
        self.encoding = IndexEncoding(space)

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        inner = self.base.infer_relative_search_space(self.encoding.view(study), self.encoding.trial(trial))
        return self.encoding.to_value_space(inner)

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        inner = self.encoding.to_index_space(search_space)
        params = self.base.sample_relative(self.encoding.view(study), self.encoding.trial(trial), inner)
        return self.encoding.values(params, inner)

    def sample_independent(self, study, trial, param_name, param_distribution) -> Any:
        inner = self.encoding.to_index_space({param_name: param_distribution})[param_name]
        value = self.base.sample_independent(self.encoding.view(study), self.encoding.trial(trial), param_name, inner)
        return self.encoding.values({param_name: value}, {param_name: inner})[param_name]

    def before_trial(self, study, trial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
