"""Multi-fidelity studies: pruners whose resource is training steps, budgets of steps and seconds, and resume."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from lmtune import attrs
from lmtune.errors import InputError
from lmtune.runtime.compute import ComputeBudget, spent
from lmtune.runtime.loop import run_trials
from lmtune.runtime.study import open_study
from lmtune.samplers.registry import make_pruner, make_sampler
from lmtune.space import Ordered, SearchSpace

SPACE = SearchSpace((Ordered("rank", (4, 8, 16, 32, 64), log=True),
                     Ordered("learning_rate", (1e-4, 3e-4, 1e-3, 3e-3), log=True),
                     Ordered("dropout", (0.0, 0.1))), {"variant": "lora"}, "mf")
STEPS, EVERY = 81, 9  # a trial reports every 9 steps up to 81: rungs at 9, 27, 81 with reduction factor 3


def curve(trial: optuna.Trial) -> float:
    """A learning curve per config: the best configs rise fastest and end highest; steps are recorded."""
    config = SPACE.suggest(trial)
    quality = -abs(math.log10(config["learning_rate"]) + 3) - 0.05 * abs(math.log2(config["rank"]) - 4)
    value = 0.0
    for step in range(EVERY, STEPS + 1, EVERY):
        value = (1 + quality) * (1 - math.exp(-step / 30))
        trial.set_user_attr(attrs.TRAIN_STEPS, step)
        trial.report(value, step)
        if step < STEPS and trial.should_prune():  # as LoraObjective: a finished trial is never pruned
            raise optuna.TrialPruned()
    return value


def history(study: optuna.Study) -> list[tuple]:
    return [(t.number, tuple(sorted(t.params.items())), t.state.name, max(t.intermediate_values or [0]))
            for t in study.trials]


def run(storage: str, name: str, pruner: str, trials: int, stop_when=None) -> optuna.Study:
    """What ``lmtune lora`` does on every start: rebuild sampler and pruner from the config, open, run."""
    study = open_study(name, storage=storage, sampler=make_sampler("tpe", seed=1, n_startup_trials=4, space=SPACE),
                       pruner=make_pruner(pruner, min_resource=EVERY, max_resource=STEPS),
                       attrs={"pruner": pruner})
    run_trials(study, curve, trials, stop_when=stop_when)
    return study


@pytest.mark.parametrize("pruner", ["successive-halving", "hyperband"])
def test_a_resumed_multi_fidelity_study_continues_its_schedule(tmp_path, pruner):
    # Hyperband draws a trial's bracket from the study name and trial number: one name, two storages
    storage = f"sqlite:///{tmp_path / 'resumed.db'}"
    whole = run(f"sqlite:///{tmp_path / 'whole.db'}", "mf", pruner, 16)
    run(storage, "mf", pruner, 7)
    resumed = run(storage, "mf", pruner, 16)  # a new process: new sampler and pruner objects
    assert history(resumed) == history(whole)
    states = [t.state for t in whole.trials]
    assert TrialState.PRUNED in states[7:] and TrialState.COMPLETE in states[7:]  # the schedule acts after resume
    assert {max(t.intermediate_values) for t in whole.trials if t.state == TrialState.PRUNED} <= {9, 27}
    with pytest.raises(InputError) as error:  # another pruner on the same study is refused
        run(storage, "mf", "median" if pruner == "hyperband" else "hyperband", 17)
    assert error.value.field == "pruner"


def test_pruners_need_their_rungs():
    with pytest.raises(InputError):
        make_pruner("hyperband")
    assert isinstance(make_pruner("successive-halving", min_resource=5, max_resource=50),
                      optuna.pruners.SuccessiveHalvingPruner)


def test_a_step_budget_starts_only_whole_trials_and_says_what_was_spent(tmp_path):
    storage = f"sqlite:///{tmp_path / 'budget.db'}"
    study = run(storage, "steps", "successive-halving", 100,
                stop_when=ComputeBudget(steps=400, trial_steps=STEPS))
    used = spent(study)
    assert used.steps <= 400 and used.steps + STEPS > 400  # the next whole trial would not have fit
    assert used.trials == len(study.trials) and used.pruned > 0 and used.complete > 0
    assert used.steps == sum(t.user_attrs[attrs.TRAIN_STEPS] for t in study.trials)
    assert used.trials > 400 // STEPS  # pruning fits more configs in the budget than whole trials would


def test_a_seconds_budget_uses_the_mean_time_of_whole_trials(tmp_path):
    storage = f"sqlite:///{tmp_path / 'seconds.db'}"
    study = optuna.create_study(storage=storage)
    budget = ComputeBudget(seconds=3600)
    assert not budget(study)  # nothing ran yet
    run_trials(study, lambda t: t.suggest_float("x", 0, 1), 3)
    assert not budget(study)  # trials of milliseconds fit in an hour
    assert ComputeBudget(seconds=1e-9)(study)
    assert not ComputeBudget()(study)  # no budget: never stops
