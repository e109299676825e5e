"""Which trials count: retries, budget stubs, the slots of a study's trial budget, and why a trial failed.

The budget of a study counts slots: the first ``n`` trials that are not retries, each replaced by its retry
if it has one. Trial numbers are assigned in order by the storage, so any number of workers agree on which
trials hold a slot without talking to each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from lmtune import attrs
from lmtune._compat import stale_retry_of

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def is_retry(trial: FrozenTrial) -> bool:
    """Whether the trial replaces another (after an interrupt or a stale heartbeat): it takes that slot."""
    return attrs.RETRY_OF in trial.user_attrs or stale_retry_of(trial) is not None


def is_budget_stub(trial: FrozenTrial) -> bool:
    """Whether the trial was created after the budget was taken and never ran (see ``run_trials``)."""
    return bool(trial.user_attrs.get(attrs.BUDGET_REACHED))


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of trials that were queued again (after an interrupt or a stale heartbeat)."""
    numbers = {t.user_attrs[attrs.RETRY_OF] for t in trials if attrs.RETRY_OF in t.user_attrs}
    return numbers | {n for n in map(stale_retry_of, trials) if n is not None}


def counted_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Finished trials that count toward the budget: retried ones are replaced by their retry."""
    return counted_among(study.get_trials(deepcopy=False))


def counted_among(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    retried = retried_numbers(trials)
    return [t for t in trials if t.state in FINISHED and t.number not in retried and not is_budget_stub(t)]


def slots_taken(trials: list[FrozenTrial]) -> int:
    """Trials holding a slot of the budget, finished or not (retries share their original's)."""
    return sum(1 for t in trials if not is_retry(t) and not is_budget_stub(t))


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
        slots_taken=slots_taken(trials),
        waiting=sum(1 for t in trials if t.state == TrialState.WAITING),
        running=[t for t in trials if t.state == TrialState.RUNNING],
    )


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a trial's parameters again, remembering which trial the new one replaces."""
    retries = trial.user_attrs.get(attrs.RETRY_COUNT, 0) + 1
    study.enqueue_trial(trial.params, user_attrs={attrs.RETRY_OF: trial.number, attrs.RETRY_COUNT: retries},
                        skip_if_exists=False)


def requeue_interrupted(study: optuna.Study, worker: str | None = None) -> int:
    """Queue again every interrupted trial that has not been queued yet (only ``worker``'s, when given: workers
    interrupted together each queue their own, so no trial is queued twice); returns how many."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    queued = 0
    for t in trials:
        if worker is not None and t.user_attrs.get(attrs.WORKER) != worker:
            continue
        if t.state == TrialState.FAIL and t.user_attrs.get(attrs.INTERRUPTED) and t.number not in retried:
            requeue(study, t)
            queued += 1
    return queued


def describe_failure(trial: FrozenTrial) -> str | None:
    """Why a FAIL trial failed. lmtune records a reason for every failure it sees; a FAIL trial without
    one was failed by another worker's heartbeat check because its own worker died."""
    if trial.state != TrialState.FAIL:
        return None
    if attrs.FAIL_REASON in trial.user_attrs:
        return str(trial.user_attrs[attrs.FAIL_REASON])
    worker = trial.user_attrs.get(attrs.WORKER, "its worker")
    return f"stale: {worker} stopped sending heartbeats (killed, preempted or cut off)"
