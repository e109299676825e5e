"""ShuffledGridSampler: every config once, and a queued retry keeps its place in the grid."""

import optuna
import pytest

from lmtune.attrs import GRID_INDEX
from lmtune.samplers.grid import ShuffledGridSampler

# every config carries a value that is the same for all ("variant"), as lmtune's LoRA grids do
CONFIGS = [{"rank": rank, "lr": lr, "variant": "lora"} for rank in (1, 2) for lr in (0.1, 0.2)]
DISTRIBUTIONS = {"rank": optuna.distributions.CategoricalDistribution((1, 2)),
                 "lr": optuna.distributions.CategoricalDistribution((0.1, 0.2))}


def objective(trial: optuna.Trial) -> float:
    return trial.suggest_categorical("rank", (1, 2)) * trial.suggest_categorical("lr", (0.1, 0.2))


def grid_indices(study: optuna.Study) -> list[int]:
    return sorted(t.system_attrs[GRID_INDEX] for t in study.trials)


@pytest.fixture(autouse=True)
def _quiet():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_every_config_is_drawn_once_and_then_the_study_stops():
    study = optuna.create_study(sampler=ShuffledGridSampler(CONFIGS, seed=0))
    study.optimize(objective, n_trials=10)
    assert grid_indices(study) == [0, 1, 2, 3]
    assert sorted(t.value for t in study.trials) == pytest.approx([0.1, 0.2, 0.2, 0.4])


def test_a_queued_retry_holds_its_config_though_it_names_only_the_searched_parameters():
    sampler = ShuffledGridSampler(CONFIGS, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.enqueue_trial({"rank": 2, "lr": 0.1})  # what a retry of an interrupted trial looks like
    assert sampler.untaken(study) == [0, 1, 3]
    study.optimize(objective, n_trials=1)
    assert study.trials[0].system_attrs[GRID_INDEX] == 2
    study.optimize(objective, n_trials=10)
    assert grid_indices(study) == [0, 1, 2, 3]  # no config trained twice, none left out


def test_a_finished_trial_without_a_recorded_index_is_found_from_its_parameters():
    sampler = ShuffledGridSampler(CONFIGS, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.add_trial(optuna.trial.create_trial(params={"rank": 1, "lr": 0.2}, distributions=DISTRIBUTIONS,
                                              value=0.2))
    assert sampler.trial_index(study.trials[0]) == 1
    assert sampler.untaken(study) == [0, 2, 3]
    assert sampler.index_of({"rank": 3, "lr": 0.2}) is None and sampler.index_of({}) is None
