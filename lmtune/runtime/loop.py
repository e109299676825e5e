"""The one trial loop of every lmtune command: ask, run the objective, tell; an exact budget across workers.

``lmtune lora``, ``lmtune worker``, ``lmtune infer`` and ``lmtune bench build-table`` all run their trials
here, on Optuna's ask-and-tell interface. What the loop adds to Optuna:

* an exact budget shared by any number of workers (slots, ``lmtune.runtime.trials``);
* every failure a live worker sees is stored as FAIL with its reason (``fail_reason``), never with a score;
* Ctrl-C or SIGTERM records the running trial as FAIL (``interrupted``) and queues it again, so running the
  same command again finishes the requested count;
* heartbeats while a trial runs (RDB storage), so another worker fails and retries the trial of a worker
  that died; a worker that wakes to find its trial failed that way goes on (``tell(skip_if_finished=True)``).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from lmtune import attrs
from lmtune._compat import discard_session, heartbeat_interval, storage_of, stored_trial, trial_id
from lmtune.errors import TrialFailed
from lmtune.runtime.orphans import fail_dead_trials, process_start
from lmtune.runtime.trials import (
    Budget,
    budget,
    counted_trials,
    is_retry,
    requeue_interrupted,
    slots_taken,
)

#: Longest stored failure reason (a traceback's first line is enough).
REASON_LIMIT = 500
#: Asked with the study before every trial: True ends the search (a compute budget, a spend budget, failures
#: in a row). ``WorkerParts.stop_when`` is the same thing, rebuilt by a job's factory.
StopWhen = Callable[[optuna.Study], bool]


class Interrupted(Exception):
    """The run was stopped by Ctrl-C or SIGTERM; storage holds everything finished so far."""


class TrialListener:
    """What a trial loop tells whoever watches it; every method does nothing here.

    The CLI's progress display overrides them; library users may pass their own.
    """

    def study_opened(self, study: optuna.Study, total: int) -> None:
        """The loop starts on ``study`` with a budget of ``total`` trials (some may be finished already)."""

    def trial_started(self, trial: optuna.Trial) -> None:
        """A trial was created and its objective is about to run."""

    def step(self, step: int, total: int) -> None:
        """The running trial's objective made progress (training steps); objectives call this."""

    def trial_done(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """A trial that counts was stored as COMPLETE, PRUNED or FAIL."""

    def waiting(self, state: Budget) -> None:
        """Every slot is taken; this worker waits for trials running elsewhere."""


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's check: fail RUNNING trials with a stale heartbeat and run the storage's retry callback."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def set_attr(trial: optuna.Trial, key: str, value: Any) -> None:
    """Set a user attribute unless another worker already failed the trial as stale (then it is finished)."""
    with contextlib.suppress(UpdateFinishedTrialError):
        trial.set_user_attr(key, value)


@contextlib.contextmanager
def _handling(signums: tuple[int, ...], handler) -> Iterator[None]:
    """Install ``handler`` for ``signums`` while the block runs, then restore the previous handlers. Off the
    main thread signals cannot be handled there: they are left alone."""
    try:
        previous = {signum: signal.signal(signum, handler) for signum in signums}
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C so the running trial is recorded before the process exits."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    with _handling((signal.SIGTERM,), interrupt):
        yield


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[list[int]]:
    """Hold Ctrl-C and SIGTERM while the block runs; the signals that arrived are in the yielded list.

    ``study.ask`` writes the new trial before it returns it: an interrupt in between would leave a RUNNING
    trial that nobody records as interrupted. The caller raises the held interrupt once it holds the trial.
    """
    held: list[int] = []
    with _handling((signal.SIGINT, signal.SIGTERM), lambda signum, frame: held.append(signum)):
        yield held


@contextlib.contextmanager
def heartbeats(study: optuna.Study, trial: optuna.Trial, interval: int | None) -> Iterator[None]:
    """Record the trial's heartbeat every ``interval`` seconds while the block runs (nothing without heartbeats)."""
    if interval is None:
        yield
        return
    storage, number = storage_of(study), trial_id(trial)
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(number)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"lmtune-heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    n_trials: int,
    *,
    listener: TrialListener | None = None,
    catch: tuple[type[BaseException], ...] = (TrialFailed,),
    stop_when: StopWhen | None = None,
) -> int:
    """Run trials until the study holds ``n_trials`` finished ones, alongside any other workers; returns how
    many ran here.

    A trial whose objective raises one of ``catch`` is stored as FAIL with the error as its reason and counts;
    any other exception is stored the same way and then raised. ``optuna.TrialPruned`` stores PRUNED. When
    every slot is taken but trials of other workers still run, this worker waits: it retries a trial whose
    worker died once the heartbeat grace period has passed; without heartbeats (journal storage) it leaves
    those trials to their workers and returns. ``stop_when(study)`` is asked before every trial (a spend budget,
    too many failures in a row). Ctrl-C or SIGTERM records the running trial as interrupted, queues it again
    and raises :class:`Interrupted`.
    """
    listener = listener or TrialListener()
    interval = heartbeat_interval(study)
    listener.study_opened(study, n_trials)
    ran = 0
    try:
        with sigterm_as_interrupt():
            fail_dead_trials(study)  # killed earlier on this host (journal storage has no heartbeats)
            requeue_interrupted(study)
            while True:
                if interval is not None:
                    fail_stale_trials(study)
                state = budget(study, n_trials)
                if state.done or (stop_when is not None and stop_when(study)):
                    break
                if state.has_work:
                    ran += _run_one(study, objective, n_trials, listener, catch, interval)
                elif interval is None or not state.running:
                    break  # nothing this worker can do: the others finish (or requeue) their trials
                else:
                    listener.waiting(state)
                    time.sleep(min(5.0, interval / 2))
    except KeyboardInterrupt:
        requeue_interrupted(study, worker_id())
        raise Interrupted(f"{len(counted_trials(study))} of {n_trials} trials finished") from None
    return ran


def _run_one(study: optuna.Study, objective, total: int, listener: TrialListener,
             catch: tuple[type[BaseException], ...], interval: int | None) -> int:
    """Ask for one trial, run it unless it came too late for the budget, tell its outcome; 1 if it ran."""
    with warnings.catch_warnings(), deferred_interrupts() as held:
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")  # we record them
        trial = study.ask()
    try:
        set_attr(trial, attrs.WORKER, worker_id())  # first: an interrupted trial is queued again by its own worker
        set_attr(trial, attrs.WORKER_STARTED, process_start())
        if held:  # Ctrl-C or SIGTERM arrived while the trial was being created: record it as interrupted
            raise KeyboardInterrupt
        if not is_retry(stored_trial(trial)):
            earlier = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
            if slots_taken(earlier) >= total:  # another worker took the last slot between our check and ask
                set_attr(trial, attrs.BUDGET_REACHED, True)
                set_attr(trial, attrs.FAIL_REASON, f"not run: the budget of {total} trials was already taken")
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                return 0
        listener.trial_started(trial)
        with heartbeats(study, trial, interval):
            state, value = _evaluate(trial, objective, catch)
    except KeyboardInterrupt:
        discard_session(study)  # the interrupt may have cut a query short, leaving its transaction's lock
        set_attr(trial, attrs.INTERRUPTED, True)
        set_attr(trial, attrs.FAIL_REASON, "interrupted before the trial finished")
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    except BaseException as error:  # not in ``catch``: recorded, then raised
        if attrs.FAIL_REASON not in trial.user_attrs:
            set_attr(trial, attrs.FAIL_REASON, f"{type(error).__name__}: {error}"[:REASON_LIMIT])
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    frozen = study.tell(trial, value, state=state, skip_if_finished=True)
    if frozen.state == state:  # else another worker failed it as stale meanwhile; its retry is queued
        listener.trial_done(study, frozen)
    return 1


def _evaluate(trial: optuna.Trial, objective, catch) -> tuple[TrialState, float | None]:
    """Run the objective; a caught failure or a non-finite value is FAIL with its reason."""
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        return TrialState.PRUNED, None
    except catch as error:
        if attrs.FAIL_REASON not in trial.user_attrs:
            set_attr(trial, attrs.FAIL_REASON, f"{type(error).__name__}: {error}"[:REASON_LIMIT])
        return TrialState.FAIL, None
    try:
        number = float(value)
    except (TypeError, ValueError):
        set_attr(trial, attrs.FAIL_REASON, f"the objective returned {value!r}, not a number")
        return TrialState.FAIL, None
    if not math.isfinite(number):
        set_attr(trial, attrs.FAIL_REASON, f"the objective returned {number}")
        return TrialState.FAIL, None
    return TrialState.COMPLETE, number
