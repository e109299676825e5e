"""Studies in the experiment trackers people keep their runs in: MLflow and Weights & Biases (``track``).

Each finished trial becomes one run of the tracker, named ``trial N``: its parameters (as a person reads them:
alpha beside alpha_ratio, an inference trial's template as text), every metric it recorded at every evaluation,
at that optimizer step (validation loss, accuracy or exact match, the training loss between evaluations), its
training loss at every step (``train_loss_step``), what it cost, and its state (a failed or pruned trial is a
FAILED or KILLED run with its reason). After the search, a ``final`` run holds the final run's scores and, as
artifacts, the best adapter and ``results.json``. The runs of one study share an MLflow experiment and parent
run, or a W&B group, named after the study.

Both go through the trackers' own clients (``mlflow.MlflowClient``, ``wandb.init``); a tracker reached over HTTP
is the client's business. Trials are logged when they finish, from what the study stored, so a tracker sees exactly
what the report and ``results.json`` say.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lmtune import attrs
from lmtune.errors import InputError
from lmtune.extras import require
from lmtune.runtime.loop import TrialListener
from lmtune.runtime.trials import Budget, describe_failure

log = logging.getLogger(__name__)
#: The trackers ``track`` may name, each alone (its default place) or with a target after a colon: an MLflow
#: tracking URI (``mlflow:http://127.0.0.1:5000``), a W&B project (``wandb:my-project``).
TRACKERS = ("mlflow", "wandb")
#: The W&B project when ``track`` names none.
WANDB_PROJECT = "lmtune"
#: Trial user attributes logged as metrics (at the trial's last step) when they are numbers.
COST_ATTRS = (attrs.COST_PER_INSTANCE, attrs.SPEND, attrs.TRAIN_SECONDS, attrs.TRAIN_STEPS)
#: MLflow run statuses by trial state.
MLFLOW_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}


def check_trackers(specs: list[str]) -> list[tuple[str, str | None]]:
    """``(tracker, target)`` of each ``track`` entry; an unknown tracker or a missing client is ``InputError``."""
    parsed = []
    for spec in specs:
        name, _, target = spec.partition(":")
        if name not in TRACKERS:
            raise InputError("track", f"unknown tracker {spec!r}; allowed: mlflow, mlflow:TRACKING_URI, wandb, "
                             "wandb:PROJECT")
        require("track", "track", (name,))
        parsed.append((name, target or None))
    return parsed


def trial_metrics(trial: FrozenTrial, metric: str) -> dict[int, dict[str, float]]:
    """Every number the trial recorded, by step: each evaluation's metrics at its step, the training loss of every
    step, the objective's value and the trial's costs at its last step."""
    by_step: dict[int, dict[str, float]] = {}
    for record in trial.user_attrs.get(attrs.TRAJECTORY) or ():
        step = int(record.get("step") or 0)
        by_step.setdefault(step, {}).update({k: float(v) for k, v in record.items() if k not in ("step", "epoch")
                                             and isinstance(v, int | float) and not isinstance(v, bool)})
    for step, loss in enumerate(trial.user_attrs.get(attrs.STEP_LOSSES) or (), start=1):
        by_step.setdefault(step, {})["train_loss_step"] = float(loss)
    if not by_step:  # a trial without a trajectory: its reports (a LoRA trial reports on the examples' axis)
        for step, value in trial.intermediate_values.items():
            by_step.setdefault(int(step), {})[metric] = float(value)
    last = max(by_step, default=0)
    if trial.value is not None:
        by_step.setdefault(last, {})[metric] = float(trial.value)
    for name in COST_ATTRS:
        value = trial.user_attrs.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            by_step.setdefault(last, {})[name] = float(value)
    return dict(sorted(by_step.items()))


def trial_params(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    """The trial's parameters as a person reads them, and a LoRA trial's resolved config (alpha, variant)."""
    from lmtune.report.page import readable_params

    return {**readable_params(study, trial), **(trial.user_attrs.get(attrs.HYPERPARAMS) or {})}


class MLflowTracker:
    """One MLflow experiment per study; a parent run for the study, a child run per trial and one for the final
    run (``mlflow.MlflowClient``, so nothing global such as ``mlflow.active_run`` is touched)."""

    def __init__(self, uri: str | None, study_name: str):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(study_name)
        self.experiment = (experiment.experiment_id if experiment is not None
                           else self.client.create_experiment(study_name))
        self.parent = self.client.create_run(self.experiment, run_name=study_name,
                                             tags={"lmtune.study": study_name}).info.run_id
        self.where = f"MLflow experiment {study_name!r} at {self.client.tracking_uri}"

    def _run(self, name: str, params: dict[str, Any], metrics: dict[int, dict[str, float]],
             tags: dict[str, str]) -> str:
        from mlflow.entities import Metric, Param

        run = self.client.create_run(self.experiment, run_name=name,
                                     tags={"mlflow.parentRunId": self.parent, **tags}).info.run_id
        stamp = self.client.get_run(run).info.start_time
        values = [Metric(key, value, stamp, step) for step, row in metrics.items() for key, value in row.items()]
        for start in range(0, max(len(values), 1), 900):  # MLflow takes at most 1,000 metrics per batch
            self.client.log_batch(run, metrics=values[start:start + 900],
                                  params=[Param(k, str(v)[:6000]) for k, v in params.items()] if not start else [])
        return run

    def trial(self, study: optuna.Study, trial: FrozenTrial, metric: str) -> None:
        tags = {"lmtune.trial": str(trial.number), "lmtune.state": trial.state.name}
        reason = describe_failure(trial) if trial.state != TrialState.COMPLETE else None
        if reason:
            tags["lmtune.reason"] = str(reason)[:500]
        run = self._run(f"trial {trial.number}", trial_params(study, trial), trial_metrics(trial, metric), tags)
        self.client.set_terminated(run, MLFLOW_STATUS.get(trial.state, "FAILED"))

    def final(self, params: dict[str, Any], metrics: dict[str, float], artifacts: list[Path]) -> None:
        run = self._run("final", params, {0: metrics}, {"lmtune.final": "true"})
        for path in artifacts:
            if path.is_dir():
                self.client.log_artifacts(run, str(path), artifact_path=path.name)
            elif path.is_file():
                self.client.log_artifact(run, str(path))
        self.client.set_terminated(run, "FINISHED")

    def close(self) -> None:
        self.client.set_terminated(self.parent, "FINISHED")


class WandbTracker:
    """One W&B run per trial and one for the final run, grouped by study; offline when ``WANDB_MODE=offline``."""

    def __init__(self, project: str | None, study_name: str, directory: Path):
        import wandb

        self.wandb, self.project, self.study_name = wandb, project or WANDB_PROJECT, study_name
        self.directory = directory
        self.where = f"W&B project {self.project!r}, group {study_name!r}"

    def _run(self, name: str, job: str, params: dict[str, Any]):
        self.directory.mkdir(parents=True, exist_ok=True)
        return self.wandb.init(project=self.project, group=self.study_name, name=name, job_type=job, config=params,
                               dir=str(self.directory), reinit="create_new",
                               settings=self.wandb.Settings(console="off", silent=True))

    def trial(self, study: optuna.Study, trial: FrozenTrial, metric: str) -> None:
        run = self._run(f"trial {trial.number}", "trial", trial_params(study, trial))
        for step, row in trial_metrics(trial, metric).items():
            run.log(row, step=step)
        run.summary["state"] = trial.state.name
        if trial.state != TrialState.COMPLETE:
            run.summary["reason"] = str(describe_failure(trial) or trial.state.name)
        run.finish(exit_code=0 if trial.state == TrialState.COMPLETE else 1)

    def final(self, params: dict[str, Any], metrics: dict[str, float], artifacts: list[Path]) -> None:
        run = self._run("final", "final", params)
        run.log(metrics, step=0)
        artifact = self.wandb.Artifact(re.sub(r"[^A-Za-z0-9._-]+", "-", f"{self.study_name}-best"), type="model")
        for path in artifacts:
            if path.is_dir():
                artifact.add_dir(str(path), name=path.name)
            elif path.is_file():
                artifact.add_file(str(path))
        run.log_artifact(artifact)
        run.finish()

    def close(self) -> None:
        """Every run is finished when it is logged."""


def open_trackers(specs: list[str], study_name: str, directory: Path) -> list[MLflowTracker | WandbTracker]:
    """The trackers ``track`` names, connected; W&B keeps its files under ``directory`` (the run's output)."""
    trackers: list[MLflowTracker | WandbTracker] = []
    for name, target in check_trackers(specs):
        tracker = MLflowTracker(target, study_name) if name == "mlflow" else WandbTracker(target, study_name,
                                                                                          directory)
        log.info("Tracking every trial in %s", tracker.where)
        trackers.append(tracker)
    return trackers


class TrackingListener(TrialListener):
    """Passes every event on to ``inner`` and logs each finished trial to the trackers."""

    def __init__(self, inner: TrialListener, trackers: list[MLflowTracker | WandbTracker], metric: str):
        self.inner, self.trackers, self.metric = inner, trackers, metric

    def study_opened(self, study: optuna.Study, total: int) -> None:
        self.inner.study_opened(study, total)

    def trial_started(self, trial: optuna.Trial) -> None:
        self.inner.trial_started(trial)

    def step(self, step: int, total: int) -> None:
        self.inner.step(step, total)

    def trial_done(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner.trial_done(study, trial)
        for tracker in self.trackers:
            tracker.trial(study, trial, self.metric)

    def waiting(self, state: Budget) -> None:
        self.inner.waiting(state)


def finish_trackers(trackers: list[MLflowTracker | WandbTracker], params: dict[str, Any], metrics: dict[str, float],
                    artifacts: list[Path]) -> None:
    """The final run with its scores and artifacts in every tracker, then the study's parent run closed."""
    for tracker in trackers:
        tracker.final(params, metrics, artifacts)
        tracker.close()
