"""Progress of a study on the terminal: a bar for trials, a bar for training steps, one line per trial."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lmtune.study import Budget, counted_trials, describe_failure


class TrialProgress:
    """Two rich bars (trials overall, steps of the current run) plus one plain line per finished trial."""

    def __init__(self, console: Console, total_trials: int | None, done: int):
        self.console = console
        self.total_trials = total_trials
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=True)
        self.trials_task = None
        if total_trials is not None:
            self.trials_task = self.progress.add_task("trials", total=total_trials, completed=done)
        self.steps_task = self.progress.add_task("steps", total=None)
        self._waiting_for: list[int] = []

    def __enter__(self) -> TrialProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def step(self, step: int, total: int) -> None:
        self.progress.update(self.steps_task, completed=step, total=total)

    def trial_done(self, study: optuna.Study, trial: FrozenTrial) -> None:
        finished = len(counted_trials(study))
        if self.trials_task is not None:
            self.progress.update(self.trials_task, completed=finished)
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
        if trial.state == TrialState.COMPLETE:
            outcome = f"{trial.value:.4f}"
        else:
            outcome = f"{trial.state.name} ({describe_failure(trial) or 'pruned'})"
        self.console.print(f"trial {trial.number} [{finished}/{self.total_trials}] {outcome} in {seconds:.1f} s "
                           f"{trial.params}")

    def waiting(self, state: Budget) -> None:
        """Say once which trials of other workers this one waits for (see ``run_trials``)."""
        numbers = sorted(t.number for t in state.running)
        if numbers != self._waiting_for:
            self._waiting_for = numbers
            self.console.print(f"{state.counted} of {state.total} trials finished; waiting for trial(s) "
                               f"{', '.join(map(str, numbers))} running elsewhere (a trial whose worker stops "
                               "sending heartbeats is failed and retried)")


def quiet_libraries(transformers: bool = True) -> None:
    """Keep the terminal for lmtune's progress: no per-trial weight-loading bars, load reports or tracebacks."""
    import warnings

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # lmtune prints its own line per trial, failures included
    if transformers:
        from transformers.utils import logging as hf_logging

        warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
