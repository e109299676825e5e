"""RUNNING trials whose process is gone: found on this host by pid and process start time, failed as interrupted.

A trial stays RUNNING when its process is killed (SIGKILL, a crash, the kernel's OOM killer). On SQLite and
PostgreSQL Optuna fails it once its heartbeat is older than the grace period, which a rerun started at once
does not reach; journal storage has no heartbeats at all, so such a trial stayed RUNNING for good and held its
slot of the budget. Every trial records the host, pid and start time of the process that runs it
(``attrs.WORKER``, ``attrs.WORKER_STARTED``), so any run on the same host fails it at once when that process is
gone: its pid is dead, or belongs now to a process started at another time (pids are reused). The trial loop
then queues its config again like an interrupted trial. Trials of other hosts are left to their hosts and to
heartbeats.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from lmtune import attrs
from lmtune._compat import storage_of, trial_id
from lmtune.runtime.storage import GRACE_PERIOD

log = logging.getLogger(__name__)


def process_start(pid: int | None = None) -> str | None:
    """What tells a process apart from a later one with the same pid: the boot and its start time in clock ticks
    since boot (``/proc``); None where ``/proc`` does not say (not Linux), or for no such process."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid or os.getpid()}/stat").read_text()
    except OSError:
        return None
    return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"  # field 22, starttime, counting from 1 before ')'


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Fail, as interrupted (the trial loop queues them again), the RUNNING trials whose process is gone; returns
    their numbers. A trial that recorded no worker is gone once it started longer than the heartbeat grace
    period ago (its process died between creating it and recording itself)."""
    host, failed = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        why = _why_gone(trial, host)
        if why is None:
            continue
        storage, number = storage_of(study), trial_id(trial)
        with contextlib.suppress(UpdateFinishedTrialError):  # its worker (or another) finished it meanwhile
            storage.set_trial_user_attr(number, attrs.INTERRUPTED, True)
            storage.set_trial_user_attr(number, attrs.FAIL_REASON, f"interrupted: {why}")
            storage.set_trial_state_values(number, TrialState.FAIL)
            failed.append(trial.number)
            log.info("trial %d was left running: %s; failed and queued again", trial.number, why)
    return failed


def _why_gone(trial: FrozenTrial, host: str) -> str | None:
    worker = trial.user_attrs.get(attrs.WORKER)
    if worker is None:
        started = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
        if time.time() - started < GRACE_PERIOD:
            return None
        return "it recorded no worker and started more than the heartbeat grace period ago"
    worker_host, _, pid = str(worker).rpartition(":")
    if worker_host != host or not pid.isdigit():
        return None
    if not _alive(int(pid)):
        return f"its process {worker} is gone (killed or crashed)"
    recorded, now = trial.user_attrs.get(attrs.WORKER_STARTED), process_start(int(pid))
    if recorded is not None and now is not None and recorded != now:
        return f"its process {worker} is gone (killed or crashed; the pid now belongs to another process)"
    return None


def _alive(pid: int) -> bool:
    """Whether a process with this pid runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
