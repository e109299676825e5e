"""``--sampler auto``: one of lmtune's samplers, chosen from what the study has, by a rule fixed on evidence.

No sampler is best everywhere on lmtune's replay tables (docs/benchmarks.md): Optuna's GP leads without memory,
while ``language-bo+`` remembering a related study finds a good config in its first trials and then lags. ``auto``
runs a *plan*: a lead sampler for the first ``handoff`` trials and a main sampler after them, each built by
``make_sampler`` exactly as ``--sampler NAME`` builds it, so every trial is one an ordinary lmtune sampler
proposed. Which plan (``choose_plan``) depends on whether the study has memory of earlier studies; the rule and
the leave-one-table-out protocol that chose it are in docs/decisions.md (issue 29).

``AutoSampler`` is an ordinary Optuna sampler: any study can use it, workers rebuild it from the study's job, and
a resumed study routes each trial by its number, so the plan holds across processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from lmtune.space import SearchSpace


@dataclass(frozen=True)
class Plan:
    """``lead`` proposes trials 0 to ``handoff - 1``, ``main`` the rest (``handoff`` 0: ``main`` alone)."""

    main: str
    lead: str | None = None
    handoff: int = 0

    def describe(self) -> str:
        if self.lead is None:
            return self.main
        return f"{self.lead} for the first {self.handoff} trials, then {self.main}"


#: The plans ``auto`` can run; the rule picks one, the others are kept for its design (``bench samplers`` methods
#: ``auto-<plan>``).
PLANS: dict[str, Plan] = {
    "gp": Plan("gp"),
    "language-bo+": Plan("language-bo+"),
    "memory-then-gp-5": Plan("gp", lead="language-bo+", handoff=5),
    "memory-then-gp-10": Plan("gp", lead="language-bo+", handoff=10),
}


def choose_plan(*, memory: bool) -> str:
    """The plan ``auto`` runs: decided by leave-one-table-out over the committed tables (docs/decisions.md)."""
    return "memory-then-gp-5" if memory else "gp"


class AutoSampler(BaseSampler):
    """The plan's samplers in turn, by trial number; ``plan`` names one of ``PLANS`` (None: ``choose_plan``).
    ``make_sampler`` is the registry's builder (passed in: the registry lists the plans, so it imports this module).

    ``transfer`` (the study's memory), ``description`` and the language-BO options go to the plan's
    ``language-bo+``; ``seed`` and ``n_startup_trials`` to both samplers.
    """

    def __init__(self, space: SearchSpace, make_sampler: Callable[..., BaseSampler], *, seed: int | None = None,
                 n_startup_trials: int = 5, transfer: Sequence[Any] = (), plan: str | None = None,
                 **language_bo: Any):
        self.plan_name = plan or choose_plan(memory=bool(transfer))
        if self.plan_name not in PLANS:
            raise ValueError(f"unknown plan {self.plan_name!r}; allowed: {', '.join(PLANS)}")
        self.plan = PLANS[self.plan_name]
        self.memory = tuple(transfer)

        def build(name: str) -> BaseSampler:
            options = {"transfer": self.memory, **language_bo} if name == "language-bo+" else {}
            return make_sampler(name, space=space, seed=seed, n_startup_trials=n_startup_trials, **options)

        self.main = build(self.plan.main)
        self.lead = build(self.plan.lead) if self.plan.lead else None

    def describe(self) -> str:
        """What ``auto`` ran, in words (the summary names it)."""
        memory = f"memory of {len(self.memory)} stud{'y' if len(self.memory) == 1 else 'ies'}" if self.memory \
            else "no memory"
        return f"auto (plan {self.plan_name}: {self.plan.describe()}; {memory})"

    def memory_report(self) -> dict[str, Any] | None:
        """What the plan's ``language-bo+`` says of its memory (``LanguageBOPlusSampler.memory_report``)."""
        for sampler in (self.lead, self.main):
            report = getattr(sampler, "memory_report", None)
            if callable(report):
                return report()
        return None

    def _for(self, trial: FrozenTrial) -> BaseSampler:
        return self.lead if self.lead is not None and trial.number < self.plan.handoff else self.main

    def reseed_rng(self) -> None:
        for sampler in (self.main, self.lead):
            if sampler is not None:
                sampler.reseed_rng()

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._for(trial).after_trial(study, trial, state, values)
