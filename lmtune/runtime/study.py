"""Open or resume a study, find one by name, and publish what a worker needs to join it.

Every lmtune search is an Optuna study, so this is a thin layer over Optuna's storage. What it adds is
that "run the same command again" resumes exactly the same search: the attributes describing what a
study searches are stored on creation and compared on every resume.
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage

from lmtune import attrs
from lmtune.errors import InputError
from lmtune.runtime.storage import make_storage, mask_url, normalize_url, scrub, secrets_in
from lmtune.space import SearchSpace


def open_study(
    study_name: str,
    *,
    storage: str | BaseStorage | None = None,
    sampler: BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    direction: str = "maximize",
    attrs: dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
    metric_names: list[str] | None = None,
) -> optuna.Study:
    """Create the study, or load it if it exists (same name = resume).

    No pruner means no pruning (Optuna's own default would be a median pruner).
    ``attrs`` describe what the study searches (space, model, data). They are stored on creation
    and compared on resume, so a study is never silently continued with a different setup. ``info`` is
    stored on creation and never compared (a dataset path as typed, for people to read). ``metric_names`` name
    the objective's values (``accuracy``, ``success``...), so optuna-dashboard and ``optuna.visualization`` say
    what was optimized instead of "Objective 0"; a study created without them (by an older lmtune) gets them on
    resume.
    """
    storage = storage if isinstance(storage, BaseStorage) else make_storage(storage)
    existing = {s.study_name: s for s in storage.get_all_studies()}
    if study_name in existing:
        found = existing[study_name]
        if found.direction.name.lower() != direction:
            raise InputError("study_name", f"study {study_name!r} exists and is {found.direction.name.lower()}d, "
                             f"not {direction}d; pick another study name")
        for key, value in (attrs or {}).items():
            stored = found.user_attrs.get(key)
            if stored is not None and not _same_setting(key, stored, value):
                raise InputError(key, f"study {study_name!r} was created with a different {key}; "
                                 "rerun with the same settings or pick another study name")
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler,
                                  pruner=pruner or optuna.pruners.NopPruner())
        if metric_names and study.metric_names is None:
            name_metrics(study, metric_names)
        return study
    try:
        study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler,
                                    pruner=pruner or optuna.pruners.NopPruner(), direction=direction)
    except optuna.exceptions.StorageInternalError as exc:  # e.g. a database that refuses writes
        cause = exc.__cause__ or exc
        reason = scrub(" ".join(str(getattr(cause, "orig", None) or cause).split()),
                       secrets_in(getattr(storage, "url", None) or ""))[:200]
        raise InputError("storage", f"cannot create study {study_name!r}: {reason}") from None
    for key, value in {**(info or {}), **(attrs or {})}.items():
        study.set_user_attr(key, value)
    if metric_names:
        name_metrics(study, metric_names)
    return study


def _same_setting(key: str, stored: Any, value: Any) -> bool:
    """Whether a stored attribute and today's say the same. A space (a LoRA study's, a build study's table grid)
    is the same when it holds the same configs: a study stored before ordered parameters existed resumes under
    today's spelling of its space (``SearchSpace.same_values``)."""
    if key == attrs.SPACE:
        return SearchSpace.from_stored(stored).same_values(SearchSpace.from_stored(value))
    if key == attrs.TABLE and isinstance(stored, dict) and isinstance(value, dict) and "grid" in stored:
        grids = SearchSpace.from_stored(stored["grid"]), SearchSpace.from_stored(value.get("grid"))
        return {**stored, "grid": None} == {**value, "grid": None} and grids[0].same_values(grids[1])
    return stored == value


def name_metrics(study: optuna.Study, names: list[str]) -> None:
    """``study.set_metric_names`` without its experimental-feature warning (stable in use since Optuna 3.2)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(names))


def find_study(storage: BaseStorage, study_name: str, url: str | None) -> optuna.study.FrozenStudy:
    """The stored summary of an existing study, or an ``InputError`` listing the studies there are."""
    studies = {s.study_name: s for s in storage.get_all_studies()}
    if study_name not in studies:
        names = ", ".join(sorted(studies)[:10]) or "none"
        raise InputError("study", f"no study {study_name!r} in {mask_url(normalize_url(url))}; studies there: {names}")
    return studies[study_name]


def publish_job(study: optuna.Study, command: str, factory: str, config: dict[str, Any], trials: int) -> None:
    """Record how to run this study's trials and how many it should hold, for ``lmtune worker``.

    ``factory`` is ``module:function``; ``function(config)`` returns ``(objective, space, attrs)`` for a
    worker, so the worker runs any command's trials without importing that command's code itself.
    Rewritten by every run, so ``lmtune lora --trials 40`` on a 20-trial study raises the budget for
    workers started afterwards.
    """
    study.set_user_attr(attrs.JOB, {"command": command, "factory": factory, "config": config})
    study.set_user_attr(attrs.BUDGET, trials)
