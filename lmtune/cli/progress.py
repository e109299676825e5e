"""Progress of a study on the terminal: a bar for trials, a bar for the running trial's steps, a line per trial.

One display for every command that runs trials (lora, worker, infer, bench build-table): it is the trial
loop's listener (``lmtune.runtime.loop.TrialListener``), and each command may say how a finished trial reads.
"""

from __future__ import annotations

import logging

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from lmtune.cli.options import as_flags
from lmtune.report.progress import Describe, default_outcome, trial_line, waiting_line
from lmtune.runtime.loop import TrialListener
from lmtune.runtime.trials import Budget, counted_trials

#: Seconds of progress the time-left estimate averages over: a whole run, since one trial may take minutes.
SPEED_WINDOW = 24 * 3600.0


class TrialProgress(TrialListener):
    """Two rich bars (trials overall, steps of the current trial) plus one plain line per finished trial."""

    def __init__(self, console: Console, describe: Describe = default_outcome):
        self.console = console
        self.describe = describe
        # rich estimates speed from the last 30 s by default: with trials of minutes "time left" never showed
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
                                 speed_estimate_period=SPEED_WINDOW)
        self.trials_task = None
        self.steps_task = self.progress.add_task("steps", total=None)
        self.total: int | None = None
        self._waiting_for: list[int] = []
        self._live = False

    def __enter__(self) -> TrialProgress:
        return self  # the bars appear with the first event, so errors before it print on a clean line

    def __exit__(self, *exc) -> None:
        if self._live:
            self.progress.stop()

    def _show(self) -> None:
        if not self._live:
            self.progress.start()
            self._live = True

    def study_opened(self, study: optuna.Study, total: int) -> None:
        self._show()
        self.total = total
        done = len(counted_trials(study))
        if self.trials_task is None:
            self.trials_task = self.progress.add_task("trials", total=total, completed=done)
        else:
            self.progress.update(self.trials_task, total=total, completed=done)

    def trial_started(self, trial: optuna.Trial) -> None:
        self._show()
        self.progress.reset(self.steps_task, total=None, description=f"trial {trial.number}")

    def step(self, step: int, total: int) -> None:
        self._show()
        self.progress.update(self.steps_task, completed=step, total=total)

    def trial_done(self, study: optuna.Study, trial: FrozenTrial) -> None:
        finished = len(counted_trials(study))
        if self.trials_task is not None:
            best = _best_so_far(study)
            self.progress.update(self.trials_task, completed=finished,
                                 description="trials" + (f" (best {best:.4g})" if best is not None else ""))
        line, nothing = trial_line(study, trial, self.total, self.describe)
        self.console.print(escape(line) + (f" [yellow]{escape(nothing)}[/]" if nothing else ""))

    def waiting(self, state: Budget) -> None:
        """Say once which trials of other workers this one waits for (see ``run_trials``)."""
        numbers = sorted(t.number for t in state.running)
        if numbers != self._waiting_for:
            self._waiting_for = numbers
            self.console.print(waiting_line(state))


def _best_so_far(study: optuna.Study) -> float | None:
    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not values:
        return None
    return max(values) if study.direction == optuna.study.StudyDirection.MAXIMIZE else min(values)


class ConsoleHandler(logging.Handler):
    """lmtune's log messages as plain lines on the console that draws the bars (so they do not tear them), the
    fields they point at written as flags."""

    def __init__(self, console: Console):
        super().__init__(logging.INFO)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "[yellow]warning:[/] " if record.levelno >= logging.WARNING else ""
        self.console.print(prefix + escape(as_flags(self.format(record))))


def log_to(console: Console) -> None:
    """Send lmtune's log messages (INFO and up) to the terminal."""
    logger = logging.getLogger("lmtune")
    logger.handlers[:] = [ConsoleHandler(console)]
    logger.setLevel(logging.INFO)
    logger.propagate = False
