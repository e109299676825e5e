"""A pruned trial is a low-fidelity observation, not a failure: the value every lmtune sampler gives it.

Successive halving and Hyperband ("Hyperband: A Novel Bandit-Based Approach to Hyperparameter Optimization",
arXiv:1603.06560) stop a config that trails its peers at a rung. It was measured, at fewer steps: calling it
the worst config (what language-BO did) or ignoring it (what Optuna's GPSampler and BoTorchSampler do; only
complete trials enter their models) throws that measurement away, and with an aggressive schedule most trials
are pruned, so a model-based sampler would see almost nothing.

lmtune's model of the fidelity is the simplest one the trajectories support: learning curves of one study run
parallel. Every trial of a study takes the same number of steps and reports at the same steps, so a pruned
trial's last report (value ``v`` at step ``s``) is moved by the median gain that the complete trials made from
step ``s`` to their end: ``v + median(final_c - value_c(s))``. A config pruned while trailing keeps trailing
by as much as it trailed, instead of counting as the worst or as nothing. With no complete trial reported at
or before ``s`` yet, the value is ``v`` itself (the last reported value at its fidelity).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import numpy as np
import optuna
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from lmtune._compat import TrialsView


def _value_at(trial: FrozenTrial, step: int) -> float | None:
    """The trial's report at the last step not after ``step`` (None: it reported nothing that early)."""
    steps = [s for s in trial.intermediate_values if s <= step]
    if not steps:
        return None
    value = trial.intermediate_values[max(steps)]
    return value if math.isfinite(value) else None


def last_report(trial: FrozenTrial) -> tuple[int, float] | None:
    """(step, value) of the trial's last finite report, or None."""
    finite = {s: v for s, v in trial.intermediate_values.items() if math.isfinite(v)}
    if not finite:
        return None
    step = max(finite)
    return step, finite[step]


def fidelity_values(trials: Iterable[FrozenTrial]) -> dict[int, float]:
    """Trial number -> the value a sampler should see for each PRUNED trial that reported something.

    See the module docstring: the last report, moved by the median gain of complete trials from that step on.
    """
    trials = list(trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
                and math.isfinite(t.value) and t.intermediate_values]
    values: dict[int, float] = {}
    for trial in trials:
        if trial.state != TrialState.PRUNED or (report := last_report(trial)) is None:
            continue
        step, value = report
        gains = [c.value - at for c in complete if (at := _value_at(c, step)) is not None]
        values[trial.number] = value + float(np.median(gains)) if gains else value
    return values


def pruned_as_complete(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials with every PRUNED one that reported shown as COMPLETE with its fidelity value (copies)."""
    values = fidelity_values(trials)
    if not values:
        return trials
    shown = []
    for trial in trials:
        if trial.number in values:
            trial = copy.copy(trial)
            trial.state = TrialState.COMPLETE
            trial.value = values[trial.number]
        shown.append(trial)
    return shown


def observed_view(study: optuna.Study) -> TrialsView:
    """The study as a model-based sampler should see it: pruned trials are observations at their fidelity."""
    return TrialsView(study, pruned_as_complete)


class ObservingSampler(BaseSampler):
    """Any Optuna sampler, shown pruned trials as observations at their fidelity (``observed_view``).

    TPE alone would rank every pruned trial below every complete one (by step reached, then value); GPSampler
    and BoTorchSampler would not see pruned trials at all. Wrapped, all three model the same observations.
    Writes (``before_trial``, ``after_trial``) go to the study itself.
    """

    def __init__(self, base: BaseSampler):
        self.base = base

    def infer_relative_search_space(self, study, trial):
        return self.base.infer_relative_search_space(observed_view(study), trial)

    def sample_relative(self, study, trial, search_space):
        return self.base.sample_relative(observed_view(study), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.base.sample_independent(observed_view(study), trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self.base.before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
