"""``lmtune worker``: join a study that ``lmtune lora`` created and run its trials until its budget is reached.

Any number of workers on any number of machines may point at one study: the storage hands each
a different trial, every sampler sees the others' running trials, heartbeats catch a worker that
dies, and ``run_trials`` keeps the count of finished trials exact.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

import optuna
from rich.console import Console

from lmtune.config import LoraRunConfig, build_config
from lmtune.errors import InputError
from lmtune.space import SearchSpace
from lmtune.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL, make_storage
from lmtune.study import (
    BUDGET,
    JOB,
    budget,
    counted_trials,
    find_study,
    make_pruner,
    make_sampler,
    open_study,
    run_trials,
)

ObjectiveFactory = Callable[[SearchSpace], Callable[[optuna.Trial], Any]]


def load_objective_factory(spec: str) -> ObjectiveFactory:
    """``module:function``, where ``function(space)`` returns an Optuna objective for the study's space.

    The current folder is importable, as for ``python -m``.
    """
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise InputError("objective", f"{spec!r} is not module:function; e.g. lmtune.synthetic:sleepy_quadratic")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError("objective", f"cannot import module {module_name!r}: {exc}") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise InputError("objective", f"module {module_name!r} has no function {name!r}")
    return factory


def run_worker(study_name: str, storage: str | None = None, *, objective: str | ObjectiveFactory | None = None,
               heartbeat_interval: int = HEARTBEAT_INTERVAL, grace_period: int = GRACE_PERIOD,
               console: Console | None = None) -> dict[str, Any]:
    """Run trials of an existing lmtune study until it holds its budget of finished trials.

    The study's own objective (LoRA training on its model and data) runs unless ``objective`` names a
    factory (``module:function`` or a callable) of another one for the study's space. Returns how
    many trials ran here and where the study stands.
    """
    console = console or Console(stderr=True, soft_wrap=True)
    store = make_storage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    summary = find_study(store, study_name, storage)
    job, total = summary.user_attrs.get(JOB), summary.user_attrs.get(BUDGET)
    if not job or total is None:
        raise InputError("study", f"{study_name!r} has no lmtune job to join; create one with "
                         "`lmtune lora --storage URL --study-name NAME --trials N --no-run`")
    if job.get("command") != "lora":
        raise InputError("study", f"{study_name!r} runs `lmtune {job.get('command')}`, which has no workers yet")
    factory = load_objective_factory(objective) if isinstance(objective, str) else objective
    cfg = build_config(LoraRunConfig, None, **job["config"], storage=storage, study_name=study_name, trials=total,
                       heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    direction = summary.direction.name.lower()
    if factory is not None:
        space = SearchSpace.from_dict(summary.user_attrs["space"], source=f"study {study_name}")
        fn, attrs, on_step = factory(space), None, None
    else:
        fn, space, attrs = _lora_objective(cfg)
        on_step = fn
    sampler = make_sampler(cfg.sampler, space=space, **cfg.sampler_options)
    study = open_study(study_name, storage=store, sampler=sampler, pruner=make_pruner(cfg.pruner),
                       direction=direction, attrs=attrs)

    from lmtune.progress import TrialProgress

    console.print(f"Worker joined study [bold]{study_name}[/]: {len(counted_trials(study))} of {total} trials "
                  f"finished, sampler {cfg.sampler}.")
    with TrialProgress(console, total, len(counted_trials(study))) as progress:
        if on_step is not None:
            on_step.progress = progress.step
        ran = run_trials(study, fn, total, callbacks=[progress.trial_done], on_wait=progress.waiting)
    state = budget(study, total)
    return {"study_name": study_name, "ran": ran, "finished": state.counted, "budget": total,
            "running_elsewhere": len(state.running)}


def _lora_objective(cfg: LoraRunConfig):
    """The study's LoRA objective, rebuilt here from the stored job; space, proxy fraction, length and seed
    must match what the study stored. Model and data come from the job's absolute paths (or hub ids),
    which name the same files on every machine by the user's setup, so their names are not compared:
    the study stored them as typed on the machine that created it."""
    from lmtune.finetune.objective import LoraObjective
    from lmtune.lora import prepare_run, study_attrs

    space, splits, model, settings = prepare_run(cfg)
    objective = LoraObjective(space, splits, model=model, proxy_fraction=cfg.proxy_fraction, settings=settings,
                              seed=cfg.seed, target_modules=cfg.target_modules)
    attrs = {k: v for k, v in study_attrs(cfg, space, splits).items() if k not in ("dataset", "model")}
    return objective, space, attrs
