"""How a finished trial reads in one line, for the terminal (``lmtune.cli.progress``) and for ``logging``.

``LogProgress`` is the trial loop's listener when a library call (``lmtune.tune_lora``) has no other: the same line
per finished trial that the command prints, through the ``lmtune`` logger, so a script that configures logging
sees what the command shows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from lmtune import attrs
from lmtune.finetune.scores import constant_of, last_metrics, learned_nothing
from lmtune.runtime.loop import TrialListener
from lmtune.runtime.trials import Budget, counted_trials, describe_failure

log = logging.getLogger("lmtune.progress")
#: How a finished trial reads in its line (after "trial N [k/total]"); the default shows value or reason.
Describe = Callable[[optuna.Study, FrozenTrial], str]


def default_outcome(study: optuna.Study, trial: FrozenTrial) -> str:
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    if trial.state == TrialState.COMPLETE:
        outcome = f"{trial.value:.4f}"
        # a LoRA trial ranked by one validation metric shows the others of its last evaluation too
        ranked = trial.user_attrs.get(attrs.METRIC_NAME)
        others = [f"{k} {v:.4f}" for k, v in last_metrics(trial).items()
                  if k in ("accuracy", "exact_match", "eval_loss") and k != ranked and isinstance(v, int | float)]
        if ranked and others:
            outcome = f"{ranked} {outcome} ({', '.join(others)})"
    else:
        outcome = f"{trial.state.name} ({describe_failure(trial) or 'pruned'})"
    return f"{outcome} in {seconds:.1f} s {trial.params}"


def trial_line(study: optuna.Study, trial: FrozenTrial, total: int | None, describe: Describe = default_outcome
               ) -> tuple[str, str | None]:
    """``trial N [k/total] <outcome>`` and, apart, why the trial learned nothing (None if it learned)."""
    finished = len(counted_trials(study))
    constant, maximize = constant_of(study)
    return (f"trial {trial.number} [{finished}/{total}] {describe(study, trial)}",
            learned_nothing(constant, trial, maximize))


def waiting_line(state: Budget) -> str:
    numbers = sorted(t.number for t in state.running)
    return (f"{state.counted} of {state.total} trials finished; waiting for trial(s) {', '.join(map(str, numbers))} "
            "running elsewhere (a trial whose worker stops sending heartbeats is failed and retried)")


class LogProgress(TrialListener):
    """One INFO line per finished trial (a warning when it learned nothing), and one when waiting for others."""

    def __init__(self, describe: Describe = default_outcome):
        self.describe = describe
        self.total: int | None = None
        self._waiting_for: list[int] = []

    def study_opened(self, study: optuna.Study, total: int) -> None:
        self.total = total

    def trial_done(self, study: optuna.Study, trial: FrozenTrial) -> None:
        line, nothing = trial_line(study, trial, self.total, self.describe)
        if nothing:
            log.warning("%s %s", line, nothing)
        else:
            log.info("%s", line)

    def waiting(self, state: Budget) -> None:
        numbers = sorted(t.number for t in state.running)
        if numbers != self._waiting_for:
            self._waiting_for = numbers
            log.info("%s", waiting_line(state))
