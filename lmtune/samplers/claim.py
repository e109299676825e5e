"""Which config of a discrete pool each trial holds, and how a trial claims one without a lock.

Two workers whose samplers see the same trials choose the same config. A trial marks its choice at once
(a system attribute: parameters can be written only once per trial) and keeps it only if no earlier trial
holds it. Trial numbers are assigned in order by the storage, so a trial decides only after every
lower-numbered running trial has decided: the earlier trial keeps the config, the later one chooses again.
"""

from __future__ import annotations

import time
from typing import Any

from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from lmtune import attrs
from lmtune._compat import queued_params, set_trial_system_attr
from lmtune.space import SearchSpace

#: Seconds a trial waits for lower-numbered running trials to mark their configs (a worker may die mid-choice).
CLAIM_WAIT = 60.0
#: Seconds between looks at the storage while waiting.
POLL = 0.05


class PoolClaims:
    """Claims of pool configs (``SearchSpace.pool_index``) by the trials of one study."""

    def __init__(self, space: SearchSpace, key: str = attrs.LANGUAGE_BO_CLAIM, wait: float = CLAIM_WAIT):
        self.space = space
        self.key = key
        self.wait = wait

    def holds(self, trial: FrozenTrial) -> int | None:
        """The pool index of a trial's config: its parameters, else its (possibly tentative) claim, else
        (queued trials) its fixed parameters; None while it has none of them complete."""
        claim = (trial.system_attrs.get(self.key) or {}).get("config")
        for config in (trial.params, claim, queued_params(trial)):
            if config:
                index = self.space.pool_index(config)
                if index is not None:
                    return index
        return None

    def decided(self, trial: FrozenTrial) -> bool:
        """Whether a trial's config is final: a final claim, or complete parameters (given or queued)."""
        claim = trial.system_attrs.get(self.key) or {}
        return claim.get("final", False) or any(
            self.space.pool_index(c) is not None for c in (trial.params, queued_params(trial)) if c)

    def claim(self, study: Study, trial: FrozenTrial, index: int) -> bool:
        """Mark the trial as holding config ``index`` so other workers see it; keep it unless an earlier trial
        holds it. Returns whether the trial keeps the config."""
        config: dict[str, Any] = self.space.pool_config(index)
        set_trial_system_attr(study, trial, self.key, {"config": config, "final": False})
        deadline = time.monotonic() + self.wait
        while True:
            earlier = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number
                       and not t.user_attrs.get(attrs.BUDGET_REACHED)]
            undecided = [t for t in earlier if t.state == TrialState.RUNNING and not self.decided(t)]
            if not undecided or time.monotonic() > deadline:
                break
            time.sleep(POLL)
        keep = all(self.holds(t) != index for t in earlier)
        if keep:
            set_trial_system_attr(study, trial, self.key, {"config": config, "final": True})
        return keep
