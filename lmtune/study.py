"""Open, resume and run Optuna studies: samplers by name, interrupts, retries, an exact trial budget.

Every lmtune search is an Optuna study, so everything here is a thin layer over Optuna's own
storage, heartbeat and retry machinery (``lmtune.storage``). What lmtune adds is the bookkeeping
that makes "run the same command again" and "start another worker" exact:

* a trial interrupted by Ctrl-C or SIGTERM is recorded as FAIL (reason ``interrupted``) and queued
  again with the same parameters; a trial whose worker died is failed by Optuna's heartbeat check
  and queued again once by Optuna's retry callback;
* the study's budget counts slots: the first ``n`` trials that are not retries, each replaced by
  its retry if it has one. Trial numbers are assigned in order by the storage, so any number of
  workers agree on which trials hold a slot without talking to each other.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from lmtune.errors import InputError, TrialFailed
from lmtune.space import SearchSpace
from lmtune.storage import DEFAULT_STORAGE, make_storage  # noqa: F401  (DEFAULT_STORAGE: public name)

SAMPLERS = ("random", "tpe", "gp", "botorch", "language-bo")
PRUNERS = ("none", "median", "hyperband")
INTERRUPTED = "interrupted"
RETRY_OF = "retry_of"
RETRY_COUNT = "retry_count"
#: User attribute naming the process that ran a trial (``host:pid``), for ``lmtune status``.
WORKER = "worker"
#: User attribute of a trial that lost the race for the study's last slot and did not run.
BUDGET_REACHED = "budget_reached"
#: Study user attributes: what a worker needs to join (command and config), and the trial budget.
JOB, BUDGET = "lmtune_job", "budget"
#: System attributes written by Optuna's ``RetryHeartbeatStaleTrialCallback`` on a retry.
STALE_RETRY_OF, STALE_RETRY_HISTORY = "failed_trial", "retry_history"


def make_sampler(name: str, *, seed: int | None = None, n_startup_trials: int = 5, space: SearchSpace | None = None,
                 **language_bo: Any) -> BaseSampler:
    """An Optuna sampler by name; ``n_startup_trials`` random trials precede model-based ones.

    With several workers each sampler sees the others' RUNNING trials: TPE as constant liars (Optuna's
    default), GP and BoTorch as pending points, language-bo never proposes a running or queued config.
    Random ignores all trials by design.

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
        from optuna_integration.botorch import qlogei_candidates_func

        # Running trials of other workers enter the acquisition as pending points; qLogEI is the batch
        # form of the LogEI BoTorchSampler uses alone (its default with pending points is the older qEI).
        return BoTorchSampler(seed=seed, n_startup_trials=n_startup_trials, consider_running_trials=True,
                              candidates_func=qlogei_candidates_func)
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


def open_study(
    study_name: str,
    *,
    storage: str | BaseStorage | None = None,
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
    storage = storage if isinstance(storage, BaseStorage) else make_storage(storage)
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


def find_study(storage: BaseStorage, study_name: str, url: str | None) -> optuna.study.FrozenStudy:
    """The stored summary of an existing study, or an ``InputError`` listing the studies there are."""
    from lmtune.storage import mask_url, normalize_url

    studies = {s.study_name: s for s in storage.get_all_studies()}
    if study_name not in studies:
        names = ", ".join(sorted(studies)[:10]) or "none"
        raise InputError("study", f"no study {study_name!r} in {mask_url(normalize_url(url))}; studies there: {names}")
    return studies[study_name]


def publish_job(study: optuna.Study, command: str, config: dict[str, Any], trials: int) -> None:
    """Record how to run this study's trials and how many it should hold, for ``lmtune worker``.

    Rewritten by every run, so ``lmtune lora --trials 40`` on a 20-trial study raises the budget
    for workers started afterwards.
    """
    study.set_user_attr(JOB, {"command": command, "config": config})
    study.set_user_attr(BUDGET, trials)


# -- retries and the budget -----------------------------------------------------------------------


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a trial's parameters again, remembering which trial the new one replaces."""
    retries = trial.user_attrs.get(RETRY_COUNT, 0) + 1
    study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number, RETRY_COUNT: retries},
                        skip_if_exists=False)


def is_retry(trial: FrozenTrial) -> bool:
    """Whether the trial replaces another (after an interrupt or a stale heartbeat): it takes that slot."""
    return RETRY_OF in trial.user_attrs or STALE_RETRY_OF in trial.system_attrs


def is_budget_stub(trial: FrozenTrial) -> bool:
    """Whether the trial was created after the budget was taken and never ran (see ``run_trials``)."""
    return bool(trial.user_attrs.get(BUDGET_REACHED))


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of trials that were queued again (after an interrupt or a stale heartbeat)."""
    numbers = {t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs}
    return numbers | {t.system_attrs[STALE_RETRY_HISTORY][-1] for t in trials
                      if t.system_attrs.get(STALE_RETRY_HISTORY)}


def counted_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Finished trials that count toward the budget: retried ones are replaced by their retry."""
    return counted_among(study.get_trials(deepcopy=False))


def counted_among(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    retried = retried_numbers(trials)
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in trials if t.state in finished and t.number not in retried and not is_budget_stub(t)]


@dataclass(frozen=True)
class Budget:
    """Where a study stands against its trial budget."""

    total: int
    counted: int  # finished trials that count
    slots_taken: int  # trials holding a slot, finished or not (retries share their original's)
    waiting: int  # queued retries
    running: list[FrozenTrial]

    @property
    def done(self) -> bool:
        return self.counted >= self.total

    @property
    def has_work(self) -> bool:
        """Whether a worker may start a trial now: a free slot or a queued retry."""
        return self.waiting > 0 or self.slots_taken < self.total


def budget(study: optuna.Study, total: int) -> Budget:
    trials = study.get_trials(deepcopy=False)
    return Budget(
        total=total,
        counted=len(counted_among(trials)),
        slots_taken=sum(1 for t in trials if not is_retry(t) and not is_budget_stub(t)),
        waiting=sum(1 for t in trials if t.state == TrialState.WAITING),
        running=[t for t in trials if t.state == TrialState.RUNNING],
    )


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


def describe_failure(trial: FrozenTrial) -> str | None:
    """Why a FAIL trial failed. lmtune records a reason for every failure it sees; a FAIL trial without
    one was failed by another worker's heartbeat check because its own worker died."""
    if trial.state != TrialState.FAIL:
        return None
    if "fail_reason" in trial.user_attrs:
        return str(trial.user_attrs["fail_reason"])
    worker = trial.user_attrs.get(WORKER, "its worker")
    return f"stale: {worker} stopped sending heartbeats (killed, preempted or cut off)"


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's check: fail RUNNING trials with a stale heartbeat and run the storage's retry callback."""
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def heartbeat_interval(study: optuna.Study) -> int | None:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    storage = study._storage
    return storage.get_heartbeat_interval() if is_heartbeat_enabled(storage) else None


# -- running trials -------------------------------------------------------------------------------


class Interrupted(Exception):
    """The run was stopped by Ctrl-C or SIGTERM; storage holds everything finished so far."""


class BudgetReached(TrialFailed):
    """Another worker took the study's last slot between this worker's check and its trial's creation."""


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


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _Slot:
    """Wraps the objective: claims a budget slot for the trial, then records why it fails if it does."""

    def __init__(self, objective: Callable[[optuna.Trial], Any], total: int):
        self.objective = objective
        self.total = total
        self.ran = 0

    def __call__(self, trial: optuna.Trial) -> Any:
        trial.set_user_attr(WORKER, worker_id())
        frozen = trial.study._storage.get_trial(trial._trial_id)
        if not is_retry(frozen):
            earlier = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number]
            if sum(1 for t in earlier if not is_retry(t) and not is_budget_stub(t)) >= self.total:
                trial.set_user_attr(BUDGET_REACHED, True)
                trial.set_user_attr("fail_reason", f"not run: the budget of {self.total} trials was already taken")
                raise BudgetReached("budget reached")
        self.ran += 1
        try:
            return self.objective(trial)
        except KeyboardInterrupt:
            trial.set_user_attr(INTERRUPTED, True)
            trial.set_user_attr("fail_reason", "interrupted before the trial finished")
            raise
        except optuna.TrialPruned:
            raise
        except Exception as error:  # every failure a live worker sees carries its reason
            if "fail_reason" not in trial.user_attrs:
                trial.set_user_attr("fail_reason", f"{type(error).__name__}: {error}"[:500])
            raise


def _optimize_one(study: optuna.Study, objective, hooks) -> None:
    """One trial; survive finding it already failed by another worker.

    A worker that was frozen (a suspended laptop, a stopped process) longer than the heartbeat grace
    period finds on waking that another worker failed its trial as stale and queued it again. Optuna
    then refuses to record the result; the retry is already queued, so this worker just goes on.
    """
    try:
        study.optimize(objective, n_trials=1, catch=(TrialFailed,), callbacks=hooks)
    except (ValueError, AssertionError) as exc:  # Optuna 5 wraps the refusal in an AssertionError
        error: BaseException | None = exc
        while error is not None and not str(error).startswith("Cannot tell a FAIL trial"):
            error = error.__context__
        if error is None:
            raise


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    n_trials: int,
    *,
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] | None = None,
    on_wait: Callable[[Budget], None] | None = None,
) -> int:
    """Run trials until the study holds ``n_trials`` finished ones, alongside any other workers; returns how
    many ran here.

    Trials that fail with :class:`TrialFailed` are recorded as FAIL and count. When every slot is
    taken but trials of other workers still run, this worker waits (calling ``on_wait``): it retries
    a trial whose worker died once the heartbeat grace period has passed. Without heartbeats (journal
    storage) it leaves those trials to their workers and returns. Ctrl-C or SIGTERM records the running
    trial as interrupted, queues it again and raises :class:`Interrupted`.
    """
    slot = _Slot(objective, n_trials)

    def counted_only(callback):
        def call(study: optuna.Study, trial: FrozenTrial) -> None:
            if not is_budget_stub(trial):
                callback(study, trial)
        return call

    hooks = [counted_only(c) for c in callbacks or []]
    interval = heartbeat_interval(study)
    try:
        with sigterm_as_interrupt():
            requeue_interrupted(study)
            while True:
                if interval is not None:
                    fail_stale_trials(study)
                state = budget(study, n_trials)
                if state.done:
                    break
                if state.has_work:
                    _optimize_one(study, slot, hooks)
                elif interval is None or not state.running:
                    break  # nothing this worker can do: the others finish (or requeue) their trials
                else:
                    if on_wait is not None:
                        on_wait(state)
                    time.sleep(min(5.0, interval / 2))
    except KeyboardInterrupt:
        requeue_interrupted(study)
        raise Interrupted(f"{len(counted_trials(study))} of {n_trials} trials finished") from None
    return slot.ran
