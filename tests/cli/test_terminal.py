"""What a new user sees first: ``lmtune --version`` and help that shows every default in plain words."""

import re

import pytest
from typer.testing import CliRunner

from lmtune import __version__
from lmtune.cli import app

COMMANDS = [["lora"], ["lora", "proxy-check"], ["infer"], ["select"], ["worker"], ["status"], ["serve"],
            ["report"], ["bench", "build-table"], ["bench", "samplers"], ["bench", "select"]]


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"lmtune {__version__}"


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_shows_defaults_and_plain_placeholders(command):
    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    assert not re.search(r"<(?:bool|int|float|str|path|list\[\w+\])>", result.output, re.I), result.output
    assert "[default:" in result.output or command == ["status"] and "[default: off]" in result.output


class Clock:
    """A hand-moved clock for rich's Progress, so the test reads the timers without waiting."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_trial_bar_timer_resets_and_the_trials_bar_shows_best_so_far_and_learned_nothing():
    import io

    import optuna
    from rich.console import Console

    from lmtune import attrs
    from lmtune.cli.progress import TrialProgress

    out = io.StringIO()
    progress = TrialProgress(Console(file=out, width=120, force_terminal=False))
    clock = progress.progress.get_time = Clock()
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(attrs.CONSTANT_SCORE, {"value": 0.25, "label": "learned nothing"})
    steps = progress.progress.tasks[0]
    steps._get_time = clock  # made in TrialProgress.__init__, before the clock was swapped
    with progress:
        progress.study_opened(study, 3)
        for value in (0.25, 0.8):
            trial = study.ask()
            progress.trial_started(trial)
            assert steps.elapsed == 0.0 and steps.finished_time is None  # the timer starts again for each trial
            clock.now += 60.0
            progress.step(10, 10)  # the bar completes, which stops rich's timer until the next reset
            assert steps.finished_time == 60.0
            clock.now += 5.0
            study.tell(trial, value)
            progress.trial_done(study, study.trials[-1])
    trials = progress.progress.tasks[1]
    assert trials.description == "trials (best 0.8)" and trials.completed == 2
    assert trials.time_remaining == 65.0  # averaged over the whole run, not rich's last 30 s
    lines = out.getvalue().splitlines()
    assert any(line.startswith("trial 0 [1/3]") and "learned nothing" in line for line in lines), lines
    assert any(line.startswith("trial 1 [2/3]") and "learned nothing" not in line for line in lines), lines


def test_a_trial_line_names_the_ranking_metric_and_shows_the_others():
    """A LoRA trial ranked by validation loss still shows its accuracy, which is what a user reads."""
    import datetime

    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    from lmtune import attrs
    from lmtune.cli.progress import default_outcome

    start = datetime.datetime(2026, 11, 28, 2, 0, 0)
    trial = create_trial(params={"rank": 8}, distributions={"rank": CategoricalDistribution([8])}, value=0.2876,
                         state=TrialState.COMPLETE,
                         user_attrs={attrs.METRIC_NAME: "eval_loss",
                                     attrs.TRAJECTORY: [{"step": 57, "eval_loss": 0.2876, "accuracy": 0.9343}]})
    trial.datetime_start, trial.datetime_complete = start, start + datetime.timedelta(seconds=16.1)
    line = default_outcome(optuna.create_study(), trial)
    assert line == "eval_loss 0.2876 (accuracy 0.9343) in 16.1 s {'rank': 8}"
