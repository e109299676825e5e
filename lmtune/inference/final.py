"""What an inference search leaves for people beyond ``results.json``: the chosen config's held-out score as the
report shows it (``attrs.FINAL_RUN``), and the search in the experiment trackers ``track`` names."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import optuna

from lmtune import attrs
from lmtune.inference.config import InferConfig
from lmtune.report.trackers import finish_trackers, open_trackers
from lmtune.runtime.storage import make_storage
from lmtune.runtime.trials import counted_trials


def record_final(study: optuna.Study, best: dict[str, Any] | None, spend: dict[str, float], metric: str,
                 instances: int) -> None:
    """The chosen config's held-out score as the report shows it (``attrs.FINAL_RUN``); nothing if untested."""
    tested = (best or {}).get("test")
    if tested is None:
        return
    study.set_user_attr(attrs.FINAL_RUN, {
        "metric": metric, "score": tested["quality"], "split": "test",
        "what": f"trial {best['trial']}'s config on the {instances} held-out instances",
        "also": {"cost per instance": f"${tested['cost_per_instance']:.4g}",
                 "testing cost": f"${spend.get('test_real', 0.0):.4g} (not part of the search's budget)"}})


def track_run(s: InferConfig, study_name: str, best: dict[str, Any] | None, spend: dict[str, float],
              started: datetime.datetime) -> None:
    """The trials this call finished, one run each, and a final run with the chosen config's scores and
    ``results.json``, in the trackers ``track`` names (trials are logged after the search: they take seconds)."""
    study = optuna.load_study(study_name=study_name, storage=make_storage(s.storage, existing=True))
    trackers = open_trackers(s.track, study_name, Path(s.output_dir or "."))
    for trial in sorted(counted_trials(study), key=lambda t: t.number):
        if trial.datetime_complete is not None and trial.datetime_complete >= started:
            for tracker in trackers:
                tracker.trial(study, trial, s.metric)
    best = best or {}
    metrics = {f"tuning_{s.metric}": best["tuning"]["quality"]} if best else {}
    if best.get("test"):
        metrics.update({f"test_{s.metric}": best["test"]["quality"],
                        "test_cost_per_instance": best["test"]["cost_per_instance"]})
    metrics.update({"spend": spend["real"], "test_spend": spend.get("test_real", 0.0)})
    artifacts = [Path(s.output_dir) / "results.json"] if s.output_dir is not None else []
    finish_trackers(trackers, dict(best.get("config") or {}), metrics, artifacts)
