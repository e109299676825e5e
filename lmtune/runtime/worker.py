"""``lmtune worker``: join a study that another command created and run its trials until its budget is reached.

Any number of workers on any number of machines may point at one study: the storage hands each a
different trial, every sampler sees the others' running trials, heartbeats catch a worker that dies,
and ``run_trials`` keeps the count of finished trials exact. The study's job (``publish_job``) names a
factory, ``module:function``, that rebuilds the study's space, sampler and objective here, so this module
runs any command's trials without knowing that command.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from lmtune import attrs
from lmtune.config import build_config
from lmtune.errors import InputError
from lmtune.llm import check_device
from lmtune.results import Result
from lmtune.runtime.loop import StopWhen, TrialListener, run_trials
from lmtune.runtime.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL, STORAGE_HELP, make_storage
from lmtune.runtime.study import find_study, open_study
from lmtune.runtime.trials import budget, counted_trials
from lmtune.space import SearchSpace

ObjectiveFactory = Callable[[SearchSpace], Callable[[optuna.Trial], Any]]
#: Factories of jobs published before the job named its factory (lmtune 0.1 wrote only the command).
KNOWN_FACTORIES = {"lora": "lmtune.lora.tune:worker_parts"}

log = logging.getLogger(__name__)


@dataclass
class WorkerParts:
    """What a job's factory rebuilds for a worker. ``objective`` is None when the worker brings its own.

    A factory is ``function(config: dict, *, space, objective: bool, listener) -> WorkerParts``; ``space`` is
    the space the study stored (None if it stored none), which the sampler must search.
    """

    space: SearchSpace
    sampler: optuna.samplers.BaseSampler
    pruner: optuna.pruners.BasePruner
    objective: Callable[[optuna.Trial], float] | None
    attrs: dict[str, Any] | None = None
    #: ``run_trials``' ``stop_when`` (a budget of steps or seconds), or None.
    stop_when: StopWhen | None = None


class WorkerConfig(BaseModel):
    """Everything ``lmtune worker`` takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    study: str = Field(min_length=1, description="name of the study to join", json_schema_extra={"flags": ["--study",
                                                                                        "--study-name"]})
    storage: str | None = Field(None, description=STORAGE_HELP, json_schema_extra={"metavar": "URL"})
    objective: str | None = Field(None, description="module:function returning an objective for the study's "
                                  "space, run instead of the study's own (e.g. lmtune.runtime.synthetic:"
                                  "sleepy_quadratic)", json_schema_extra={"metavar": "MODULE:FUNCTION"})
    heartbeat_interval: int = Field(HEARTBEAT_INTERVAL, ge=1, description="seconds between heartbeats of a "
                                    "running trial (SQLite/PostgreSQL)")
    grace_period: int = Field(GRACE_PERIOD, ge=2, description="seconds without a heartbeat before a trial is "
                              "failed and retried once")
    device: str | None = Field(None, description="where this worker trains: cpu, cuda or cuda:N (default: the "
                               "study's, else cuda when present)", json_schema_extra={"metavar": "DEVICE"})
    devices: list[str] | None = Field(None, description="one worker per device, each a process of its own: all "
                                      "(every GPU) or a list such as cuda:0,cuda:1 (cpu,cpu: two on the CPU); Ctrl-C "
                                      "stops them all", json_schema_extra={"split": ",", "metavar": "all|DEVICE,..."})

    @field_validator("devices")
    @classmethod
    def _one_of_device_or_devices(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is not None and info.data.get("device") is not None:
            raise ValueError("give `device` (this worker) or `devices` (one worker each), not both")
        return value


@dataclass
class WorkerResult(Result):
    """How many trials ran here and where the study stands."""

    study_name: str
    ran: int
    finished: int
    budget: int
    running_elsewhere: int


def load_callable(spec: str, field: str, example: str) -> Callable:
    """``module:function`` as a callable; the current folder is importable, as for ``python -m``."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise InputError(field, f"{spec!r} is not module:function; e.g. {example}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(field, f"cannot import module {module_name!r}: {exc}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise InputError(field, f"module {module_name!r} has no function {name!r}")
    return function


def run_worker(config: WorkerConfig | None = None, *, objective_factory: ObjectiveFactory | None = None,
               listener: TrialListener | None = None, **fields: Any) -> WorkerResult:
    """Run trials of an existing lmtune study until it holds its budget of finished trials.

    The study's own objective runs unless ``config.objective`` (``module:function``) or ``objective_factory``
    names a factory of another one for the study's space.
    """
    cfg = config or build_config(WorkerConfig, **fields)
    if cfg.devices is not None:
        raise InputError("devices", "starts one process per device: run `lmtune worker --devices ...`, or call "
                                    "run_worker with one `device` in each process")
    if cfg.device is not None:
        check_device(cfg.device)
    store = make_storage(cfg.storage, heartbeat_interval=cfg.heartbeat_interval, grace_period=cfg.grace_period,
                         existing=True)
    summary = find_study(store, cfg.study, cfg.storage)
    job, total = summary.user_attrs.get(attrs.JOB), summary.user_attrs.get(attrs.BUDGET)
    if not job or total is None:
        raise InputError("study", f"{cfg.study!r} has no lmtune job to join; create one with "
                         "`lmtune lora --storage URL --study-name NAME --trials N --no-run`")
    spec = job.get("factory") or KNOWN_FACTORIES.get(job.get("command"))
    if spec is None:
        raise InputError("study", f"{cfg.study!r} runs `lmtune {job.get('command')}`, which has no workers")
    if cfg.objective is not None:
        objective_factory = load_callable(cfg.objective, "objective", "lmtune.runtime.synthetic:sleepy_quadratic")
    stored_space = summary.user_attrs.get(attrs.SPACE)
    space = None if stored_space is None else SearchSpace.from_stored(stored_space, source=f"study {cfg.study}")
    parts: WorkerParts = load_callable(spec, "study", "lmtune.lora.tune:worker_parts")(
        {**job["config"], "storage": cfg.storage, "study_name": cfg.study, "trials": total,
         "heartbeat_interval": cfg.heartbeat_interval, "grace_period": cfg.grace_period,
         **({"device": cfg.device} if cfg.device is not None else {})},
        space=space, objective=objective_factory is None, listener=listener)
    objective = parts.objective if objective_factory is None else objective_factory(parts.space)
    study = open_study(cfg.study, storage=store, sampler=parts.sampler, pruner=parts.pruner,
                       direction=summary.direction.name.lower(), attrs=parts.attrs)
    log.info("Worker joined study %s: %d of %d trials finished, sampler %s.", cfg.study,
             len(counted_trials(study)), total, type(parts.sampler).__name__)
    ran = run_trials(study, objective, total, listener=listener, stop_when=parts.stop_when)
    state = budget(study, total)
    return WorkerResult(study_name=cfg.study, ran=ran, finished=state.counted, budget=total,
                        running_elsewhere=len(state.running))
