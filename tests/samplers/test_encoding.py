"""Optuna's samplers see ordered parameters as indexes; studies store and read back the values."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState

from lmtune.errors import InputError
from lmtune.runtime.study import open_study
from lmtune.samplers.distinct import DistinctSampler
from lmtune.samplers.encoding import IndexedSampler
from lmtune.samplers.fidelity import ObservingSampler
from lmtune.samplers.registry import make_sampler
from lmtune.space import Categorical, Ordered, SearchSpace

SPACE = SearchSpace(
    (
        Ordered("learning_rate", (1e-4, 3e-4, 1e-3, 3e-3), log=True),
        Ordered("rank", (4, 16, 64), log=True),
        Categorical("alpha_ratio", (1.0, 4.0)),  # numbers a user declared unordered
        Categorical("variant", ("lora", "dora")),
    ),
    {"dropout": 0.0},
    "encoding",
)


class SeeingRandomSampler(optuna.samplers.RandomSampler):
    """Optuna's RandomSampler, noting the distributions it is asked to sample and the trials it is shown."""

    def __init__(self, seed: int):
        super().__init__(seed=seed)
        self.asked: dict[str, set] = {}
        self.shown: list[optuna.trial.FrozenTrial] = []

    def sample_independent(self, study, trial, param_name, param_distribution):
        self.asked.setdefault(param_name, set()).add(param_distribution)
        self.shown = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return super().sample_independent(study, trial, param_name, param_distribution)


def score(config) -> float:
    return config["learning_rate"] * 1e3 + config["rank"] / 64 + (config["variant"] == "dora")


def test_the_base_sampler_sees_indexes_and_the_study_stores_values():
    base = SeeingRandomSampler(seed=0)
    study = optuna.create_study(sampler=IndexedSampler(base, SPACE))
    study.optimize(lambda t: score(SPACE.suggest(t)), n_trials=8)
    assert base.asked["learning_rate"] == {IntDistribution(0, 3)}
    assert base.asked["rank"] == {IntDistribution(0, 2)}
    assert base.asked["alpha_ratio"] == {CategoricalDistribution((1.0, 4.0))}  # unordered: labels, as declared
    assert base.asked["variant"] == {CategoricalDistribution(("lora", "dora"))}
    assert len(base.shown) == 7
    for shown, stored in zip(base.shown, study.trials, strict=False):
        assert shown.distributions["learning_rate"] == IntDistribution(0, 3)
        assert SPACE.param("learning_rate").value_at(shown.params["learning_rate"]) == stored.params["learning_rate"]
        assert shown.params["variant"] == stored.params["variant"]
    for trial in study.trials:
        assert trial.distributions == SPACE.distributions()  # what every study stored before: the values
        assert SPACE.validate({**trial.params, **SPACE.fixed}) == {**trial.params, **SPACE.fixed}


@pytest.mark.parametrize("name", ["random", "tpe", "gp", "botorch"])
def test_every_optuna_sampler_is_indexed_inside_the_never_repeat_rule(name):
    sampler = make_sampler(name, space=SPACE, seed=0, n_startup_trials=3)
    assert isinstance(sampler, DistinctSampler)
    base = sampler.make_base(1)
    assert isinstance(base, IndexedSampler) and isinstance(base.base, ObservingSampler)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: score(SPACE.suggest(t)), n_trials=10)
    configs = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(configs)) == 10
    # the model-based ones propose from a relative search space in the study's own distributions
    relative = base.infer_relative_search_space(study, study.trials[-1])
    assert all(relative[name] == SPACE.distributions()[name] for name in relative)


def old_space_dict(space: SearchSpace) -> dict:
    """How lmtune stored a space before ordered parameters existed: every parameter categorical, no format."""
    return {"name": space.name, "fixed": dict(space.fixed),
            "params": {p.name: {"type": "categorical", "choices": list(p.values())} for p in space.params}}


def test_a_study_stored_before_ordered_parameters_resumes_and_reads_back_the_same(tmp_path):
    storage = f"sqlite:///{tmp_path / 'old.db'}"
    old = SearchSpace.from_dict(old_space_dict(SPACE))  # every number categorical, as the old lmtune had it
    study = open_study("old", storage=storage, sampler=optuna.samplers.RandomSampler(seed=1),
                       attrs={"space": old_space_dict(SPACE)})
    study.optimize(lambda t: score(old.suggest(t)), n_trials=4)
    before = [(t.number, t.params) for t in study.trials]

    resumed = open_study("old", storage=storage, sampler=make_sampler("gp", space=SPACE, seed=0, n_startup_trials=2),
                         attrs={"space": SPACE.to_dict()})  # today's spelling of the same configs: not refused
    resumed.optimize(lambda t: score(SPACE.suggest(t)), n_trials=4)
    trials = optuna.load_study(study_name="old", storage=storage).trials
    assert [(t.number, t.params) for t in trials[:4]] == before
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 8
    assert all(t.distributions == old.distributions() for t in trials)
    with pytest.raises(InputError) as err:  # other configs are still another space
        open_study("old", storage=storage, attrs={"space": SPACE.with_fixed(variant="lora").to_dict()})
    assert err.value.field == "space"
