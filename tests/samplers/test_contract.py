"""The contract every lmtune sampler keeps, in the spirit of Optuna's own ``samplers_tests/test_samplers.py``.

Every name in the registry (the agent in its default mode, centaur), the agent's lead mode and the grid sampler:
proposals lie in the space, no config of a discrete pool is proposed twice (finished or running), failed and pruned
trials are survived, the same seed gives the same study, and the sampler pickles (Optuna pickles samplers with
studies and for process pools).
"""

from __future__ import annotations

import math
import pickle

import optuna
import pytest
from optuna.trial import TrialState

from lmtune.errors import TrialFailed
from lmtune.runtime.loop import run_trials
from lmtune.runtime.study import open_study
from lmtune.samplers.grid import ShuffledGridSampler
from lmtune.samplers.registry import SAMPLERS, make_sampler
from lmtune.space import Ordered, SearchSpace
from tests.conftest import AGENT_TEST_OPTIONS

#: 24 configs: small enough to exhaust in a test, ordered numbers (the numeric samplers see their indexes).
SPACE = SearchSpace(
    (
        Ordered("rank", (4, 16, 64), log=True),
        Ordered("learning_rate", (1e-4, 3e-4, 1e-3, 3e-3), log=True),
        Ordered("dropout", (0.0, 0.1)),
    ),
    {"variant": "lora"},
    "contract",
)
NAMES = [*SAMPLERS, "agent-lead", "auto-memory-then-gp-5", "grid"]


@pytest.fixture
def encoders(encoders, agent_endpoint):
    """What the model-based samplers need: tiny encoders (language-BO), and lmtune serve with agent-lm (agent)."""
    return {**encoders, "agent": agent_endpoint}


def make(name: str, encoders, tmp_path, seed: int = 0):
    if name == "grid":
        return ShuffledGridSampler(list(SPACE.iter_pool()), seed=seed)
    model_based = name.startswith(("language-bo", "auto"))
    options = {"encoder": encoders["bert"], "cache_dir": tmp_path / "cache"} if model_based else {}
    if name.startswith("agent"):  # centaur needs room for the reason of an override
        options = {"endpoint": encoders["agent"], **AGENT_TEST_OPTIONS, "retries": 1}
        options.update({"mode": "lead"} if name == "agent-lead" else {"reason_chars": 40, "override_share": 0.5})
        name = "agent"
    return make_sampler(name, seed=seed, n_startup_trials=3, space=SPACE, **options)


def score(config) -> float:
    return -abs(math.log10(config["learning_rate"]) + 3) - 0.1 * abs(math.log2(config["rank"]) - 4) - config["dropout"]


def objective(trial: optuna.Trial) -> float:
    return score(SPACE.suggest(trial))


def configs(study: optuna.Study) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in study.trials if t.params]


@pytest.fixture
def storage(tmp_path):
    return f"sqlite:///{tmp_path / 'contract.db'}"


@pytest.mark.parametrize("name", NAMES)
def test_proposals_lie_in_the_space_and_never_repeat(name, encoders, tmp_path, storage):
    study = open_study(name, storage=storage, sampler=make(name, encoders, tmp_path))
    run_trials(study, objective, 12)
    assert all(SPACE.validate({**t.params, **SPACE.fixed}) for t in study.trials)
    assert len(set(configs(study))) == 12


@pytest.mark.parametrize("name", NAMES)
def test_a_running_trial_holds_its_config(name, encoders, tmp_path, storage):
    study = open_study(name, storage=storage, sampler=make(name, encoders, tmp_path))
    run_trials(study, objective, 5)
    held = [study.ask() for _ in range(3)]  # three workers are mid-trial at once
    chosen = [tuple(sorted(SPACE.suggest(t).items())) for t in held]
    assert len(set(chosen)) == 3
    finished = {tuple(sorted({**t.params, **SPACE.fixed}.items())) for t in study.trials
                if t.state == TrialState.COMPLETE}
    assert not finished & set(chosen)


@pytest.mark.parametrize("name", NAMES)
def test_failed_trials_are_survived_and_not_proposed_again(name, encoders, tmp_path, storage):
    def flaky(trial: optuna.Trial) -> float:
        config = SPACE.suggest(trial)
        if config["learning_rate"] == 3e-3:
            raise TrialFailed("diverged")
        return score(config)

    study = open_study(name, storage=storage, sampler=make(name, encoders, tmp_path))
    study.enqueue_trial({"rank": 4, "learning_rate": 3e-3, "dropout": 0.0})
    run_trials(study, flaky, 12)
    assert study.trials[0].state == TrialState.FAIL
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) >= 6
    assert len(set(configs(study))) == 12


@pytest.mark.parametrize("name", NAMES)
def test_pruned_trials_are_observations_not_failures_and_are_not_proposed_again(name, encoders, tmp_path, storage):
    """Successive halving stops most trials early; every sampler goes on and never repeats a stopped config."""
    def curve(trial: optuna.Trial) -> float:
        config = SPACE.suggest(trial)
        for step in (1, 2, 3):
            trial.report(score(config) - 1 / step, step)
            if step < 3 and trial.should_prune():
                raise optuna.TrialPruned()
        return score(config)

    study = open_study(name, storage=storage, sampler=make(name, encoders, tmp_path),
                       pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2))
    run_trials(study, curve, 12)
    states = [t.state for t in study.trials]
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states
    assert len(set(configs(study))) == 12


@pytest.mark.parametrize("name", NAMES)
def test_the_same_seed_gives_the_same_study(name, encoders, tmp_path):
    runs = []
    for _ in range(2):
        study = optuna.create_study(direction="maximize", sampler=make(name, encoders, tmp_path, seed=7))
        run_trials(study, objective, 8)
        runs.append(configs(study))
    assert runs[0] == runs[1]


@pytest.mark.parametrize("name", NAMES)
def test_the_sampler_pickles_and_the_copy_samples(name, encoders, tmp_path):
    sampler = make(name, encoders, tmp_path)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    run_trials(study, objective, 4)
    copy = pickle.loads(pickle.dumps(sampler))
    again = optuna.create_study(direction="maximize", sampler=copy)
    run_trials(again, objective, 4)
    assert all(SPACE.validate({**t.params, **SPACE.fixed}) for t in again.trials)
