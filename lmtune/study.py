"""Open, resume and run Optuna studies: samplers by name, storage URLs, interrupts, trial counts.

Every lmtune search is an Optuna study, so everything here is a thin layer over Optuna's own
storage, heartbeat and retry machinery. What lmtune adds is the bookkeeping that makes
"run the same command again" resume exactly: a trial interrupted by Ctrl-C or SIGTERM is
recorded as FAIL (reason ``interrupted``) and queued again with the same parameters, and the
requested trial count counts finished trials that were not retried.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from optuna.samplers import BaseSampler
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from lmtune.errors import InputError, TrialFailed
from lmtune.space import SearchSpace

DEFAULT_STORAGE = "sqlite:///lmtune.db"
SAMPLERS = ("random", "tpe", "gp", "botorch", "language-bo")
PRUNERS = ("none", "median", "hyperband")
INTERRUPTED = "interrupted"
RETRY_OF = "retry_of"
RETRY_COUNT = "retry_count"
MAX_STALE_RETRIES = 2

#: Seconds between heartbeats of a running trial, and silence after which another worker (or the
#: next run) may fail it as stale and queue it again.
HEARTBEAT_INTERVAL = 30
GRACE_PERIOD = 120


def make_sampler(name: str, *, seed: int | None = None, n_startup_trials: int = 5, space: SearchSpace | None = None,
                 **language_bo: Any) -> BaseSampler:
    """An Optuna sampler by name; ``n_startup_trials`` random trials precede model-based ones.

    ``language-bo`` searches the discrete pool of ``space``; ``language_bo`` holds its options
    (template, encoder, use_projection, use_learnable_token, shortlist_k, ...).
    """
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup_trials)
    if name == "botorch":
        from optuna_integration import BoTorchSampler

        return BoTorchSampler(seed=seed, n_startup_trials=n_startup_trials)
    if name == "language-bo":
        if space is None:
            raise InputError("sampler", "language-bo needs the search space whose pool it ranks")
        from lmtune.samplers import LanguageBOSampler

        return LanguageBOSampler(space, seed=seed, n_startup_trials=n_startup_trials, **language_bo)
    raise InputError("sampler", f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    raise InputError("pruner", f"unknown pruner {name!r}; allowed: {', '.join(PRUNERS)}")


def make_storage(url: str | None = None) -> RDBStorage:
    """Optuna RDB storage with heartbeats, so trials of a dead worker are failed and retried."""
    url = url or DEFAULT_STORAGE
    if "://" not in url:
        raise InputError("storage", f"{url!r} is not a database URL; e.g. {DEFAULT_STORAGE} or postgresql://...")
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=HEARTBEAT_INTERVAL,
            grace_period=GRACE_PERIOD,
            heartbeat_stale_trial_callback=requeue_stale,
        )
    except Exception as exc:  # SQLAlchemy raises many kinds; all mean "cannot use this URL"
        raise InputError("storage", f"cannot open {url}: {' '.join(str(exc).split())[:200]}") from None


def open_study(
    study_name: str,
    *,
    storage: str | RDBStorage | None = None,
    sampler: BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    direction: str = "maximize",
    attrs: dict[str, Any] | None = None,
) -> optuna.Study:
    """Create the study, or load it if it exists (same name = resume).

    No pruner means no pruning (Optuna's own default would be a median pruner).
    ``attrs`` describe what the study searches (space, model, data). They are stored on creation
    and compared on resume, so a study is never silently continued with a different setup.
    """
    storage = storage if isinstance(storage, RDBStorage) else make_storage(storage)
    existing = {s.study_name: s for s in storage.get_all_studies()}
    if study_name in existing:
        found = existing[study_name]
        if found.direction.name.lower() != direction:
            raise InputError("study_name", f"study {study_name!r} exists and is {found.direction.name.lower()}d, "
                             f"not {direction}d; pick another study name")
        for key, value in (attrs or {}).items():
            stored = found.user_attrs.get(key)
            if stored is not None and stored != value:
                raise InputError(key, f"study {study_name!r} was created with a different {key}; "
                                 "rerun with the same settings or pick another study name")
        return optuna.load_study(study_name=study_name, storage=storage, sampler=sampler,
                                 pruner=pruner or optuna.pruners.NopPruner())
    study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler,
                                pruner=pruner or optuna.pruners.NopPruner(), direction=direction)
    for key, value in (attrs or {}).items():
        study.set_user_attr(key, value)
    return study


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a trial's parameters again, remembering which trial the new one replaces."""
    retries = trial.user_attrs.get(RETRY_COUNT, 0) + 1
    study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number, RETRY_COUNT: retries},
                        skip_if_exists=False)


def requeue_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """Heartbeat callback: a trial whose worker died is run again, at most ``MAX_STALE_RETRIES`` times.

    The limit keeps a config that kills its worker (for example by exhausting memory) from
    being retried forever.
    """
    if trial.user_attrs.get(RETRY_COUNT, 0) < MAX_STALE_RETRIES:
        requeue(study, trial)


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of trials that were queued again (after an interrupt or a stale heartbeat)."""
    return {t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs}


def counted_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Finished trials that count toward the requested number: retried ones are replaced by their retry."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in trials if t.state in finished and t.number not in retried]


def requeue_interrupted(study: optuna.Study) -> int:
    """Queue again every interrupted trial that has not been queued yet; returns how many."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    queued = 0
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get(INTERRUPTED) and t.number not in retried:
            requeue(study, t)
            queued += 1
    return queued


class Interrupted(Exception):
    """The run was stopped by Ctrl-C or SIGTERM; storage holds everything finished so far."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C so the running trial is recorded before the process exits."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def mark_interrupts(objective: Callable[[optuna.Trial], Any]) -> Callable[[optuna.Trial], Any]:
    """Wrap an objective so an interrupted trial carries the reason before Optuna fails it."""
    def wrapped(trial: optuna.Trial) -> Any:
        try:
            return objective(trial)
        except KeyboardInterrupt:
            trial.set_user_attr(INTERRUPTED, True)
            trial.set_user_attr("fail_reason", "interrupted before the trial finished")
            raise

    return wrapped


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    n_trials: int,
    *,
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] | None = None,
) -> int:
    """Run until ``n_trials`` trials have finished in this study (across runs); returns how many ran now.

    Trials that fail with :class:`TrialFailed` are recorded as FAIL and the search goes on.
    Ctrl-C or SIGTERM records the running trial as interrupted, queues it again for the next run
    and raises :class:`Interrupted`.
    """
    requeue_interrupted(study)
    remaining = n_trials - len(counted_trials(study))
    if remaining <= 0:
        return 0

    def stop_when_done(study: optuna.Study, trial: FrozenTrial) -> None:
        if len(counted_trials(study)) >= n_trials:
            study.stop()

    before = len(study.get_trials(deepcopy=False))
    try:
        with sigterm_as_interrupt():
            study.optimize(mark_interrupts(objective), n_trials=remaining, catch=(TrialFailed,),
                           callbacks=[*(callbacks or []), stop_when_done])
    except KeyboardInterrupt:
        requeue_interrupted(study)
        raise Interrupted(f"{len(counted_trials(study))} of {n_trials} trials finished") from None
    return len(study.get_trials(deepcopy=False)) - before
