"""What a study's trials spent, in optimizer steps and seconds, and a budget of either for ``run_trials``.

With pruning, trials differ in cost: a trial stopped at the first rung costs a fraction of one that ran to its
end. A budget in trials then says little about compute, so a search can also be given a budget of training
steps or seconds, shared by every worker of the study (it is read from the storage before each trial).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from lmtune import attrs
from lmtune.runtime.trials import counted_trials


def trial_seconds(trial: FrozenTrial) -> float:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return 0.0
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


@dataclass(frozen=True)
class Spent:
    """What the finished trials that count took: how many of each state, optimizer steps and wall seconds."""

    trials: int
    complete: int
    pruned: int
    failed: int
    steps: int
    seconds: float

    def to_dict(self) -> dict:
        return {**asdict(self), "seconds": round(self.seconds, 1)}


def spent(study: optuna.Study) -> Spent:
    trials = counted_trials(study)
    states = [t.state for t in trials]
    return Spent(trials=len(trials), complete=states.count(TrialState.COMPLETE),
                 pruned=states.count(TrialState.PRUNED), failed=states.count(TrialState.FAIL),
                 steps=sum(int(t.user_attrs.get(attrs.TRAIN_STEPS, 0)) for t in trials),
                 seconds=sum(map(trial_seconds, trials)))


class ComputeBudget:
    """``stop_when`` for ``run_trials``: True once a whole trial no longer fits in the steps or seconds left.

    A trial takes at most ``trial_steps`` steps; its seconds are estimated by the mean of the trials that ran
    to their end (none yet: it starts). Trials running elsewhere count as whole trials, so workers sharing a
    study do not overshoot together. A trial that has started always finishes.
    """

    def __init__(self, *, steps: int | None = None, seconds: float | None = None, trial_steps: int = 1):
        self.steps, self.seconds, self.trial_steps = steps, seconds, trial_steps

    def __call__(self, study: optuna.Study) -> bool:
        if self.steps is None and self.seconds is None:
            return False
        used = spent(study)
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if self.steps is not None and used.steps + (running + 1) * self.trial_steps > self.steps:
            return True
        if self.seconds is not None:
            whole = [trial_seconds(t) for t in counted_trials(study) if t.state == TrialState.COMPLETE]
            estimate = statistics.fmean(whole) if whole else 0.0
            return used.seconds + (running + 1) * estimate > self.seconds
        return False
