"""What a run of ``lmtune infer`` finds when it resumes a study: its spend account, and trials whose process died.

The spend journal (``lmtune.llm.cache``) is the truth about what a study has spent, so a study keeps one journal
file for good: the first run records its path (the response cache, or ``OUTPUT_DIR/spend.sqlite`` without a
cache) and its account in the study, and later runs use that file whatever their ``cache`` says. A study
whose journal file is gone (or that was created before journals) starts its account from what its trials
recorded, which misses the calls of a run that was killed mid-call; lmtune warns when that happens.

A trial stays RUNNING when its process is killed (SIGKILL, a crash). Optuna fails such trials once their
heartbeat is older than the grace period (120 s on SQLite and PostgreSQL; never on journal storage), which a
rerun started at once does not reach. An infer trial is only ever run by the process that records its worker
(``host:pid``), so a rerun on the same host fails it at once when that process is gone, and queues its config
again like an interrupted trial. Its calls are in the journal, counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from lmtune import attrs
from lmtune._compat import storage_of, trial_id
from lmtune.llm.cache import ResponseStore, SpendJournal
from lmtune.runtime.loop import worker_id
from lmtune.runtime.storage import GRACE_PERIOD

log = logging.getLogger(__name__)


def open_journal(study: optuna.Study, cache: ResponseStore | None, output_dir: Path | None) -> SpendJournal:
    """The study's spend journal: that of the file it recorded, else of the response cache, else of
    ``spend.sqlite``, else in memory."""
    if cache is not None:
        default: Path | None = cache.path
    else:
        default = Path(output_dir) / "spend.sqlite" if output_dir is not None else None
    recorded = study.user_attrs.get(attrs.SPEND_JOURNAL)
    if recorded is not None and Path(recorded).is_file():
        if cache is not None and Path(recorded).resolve() == cache.path.resolve():
            return cache.journal
        log.info("the spend of study %s is kept in %s", study.study_name, recorded)
        return ResponseStore(recorded).journal
    if recorded is not None:
        log.warning("the spend journal of study %s, %s, is gone; its spend starts from what its trials recorded "
                    "(calls of a run killed mid-call are missing from that)", study.study_name, recorded)
    if default is None:
        return ResponseStore(":memory:").journal
    study.set_user_attr(attrs.SPEND_JOURNAL, str(default.resolve()))
    return (cache if cache is not None else ResponseStore(default)).journal


def spend_account(study: optuna.Study, journal: SpendJournal, trials: list[FrozenTrial]) -> str:
    """The study's account in ``journal``, opened with what its trials recorded if the journal lacks it."""
    account = study.user_attrs.get(attrs.SPEND_ACCOUNT)
    if account is None:
        account = uuid.uuid4().hex
        study.set_user_attr(attrs.SPEND_ACCOUNT, account)
    if not journal.has_account(account):
        journal.open_account(account, sum(t.user_attrs.get(attrs.SPEND, 0.0) for t in trials), worker_id())
    return account


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Fail (and mark interrupted, so the trial loop queues them again) RUNNING trials whose process is gone:
    its worker is on this host and its pid is dead or is this process, or it never recorded a worker and
    started longer than the heartbeat grace period ago. Returns their numbers."""
    host, failed = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(attrs.WORKER)
        if worker is None:
            started = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
            if time.time() - started < GRACE_PERIOD:
                continue
            why = "it recorded no worker and started more than the heartbeat grace period ago"
        else:
            worker_host, _, pid = str(worker).rpartition(":")
            if worker_host != host or not pid.isdigit() or _alive(int(pid)):
                continue
            why = f"its process {worker} is gone (killed or crashed)"
        storage, number = storage_of(study), trial_id(trial)
        with contextlib.suppress(UpdateFinishedTrialError):
            storage.set_trial_user_attr(number, attrs.INTERRUPTED, True)
            storage.set_trial_user_attr(number, attrs.FAIL_REASON, f"interrupted: {why}")
            storage.set_trial_state_values(number, TrialState.FAIL)
            failed.append(trial.number)
            log.info("trial %d was left running: %s; failed and queued again", trial.number, why)
    return failed


def _alive(pid: int) -> bool:
    """Whether a process with this pid runs (a zombie does not), other than this one."""
    if pid == os.getpid():
        return False
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
