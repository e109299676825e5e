"""``CentaurSampler``: the language model as a bounded advisor of a classical sampler (``--agent-mode centaur``).

"Can LLMs Beat Classical Hyperparameter Optimization Algorithms? A Study on autoresearch" (arXiv:2603.24647):
in a fixed search space classical optimizers (CMA-ES, TPE) beat LLM agents, and the best arrangement found,
which its authors call Centaur, lets an LLM that sees the optimizer's state override the optimizer on a bounded
share of the trials (a larger share did worse; a small model was enough). Here the registry's default sampler
proposes every trial; the model reads that proposal beside the Trajectory Context Summarizer's report (the
Analyzer block, then the Advisor block) and may replace it. A model that knows nothing can then cost at most its
share of the trials, and nothing when its replies are unusable or its endpoint is down: the classical proposal
simply stands.

The bound holds at every point of a study: trial ``t`` may override only if, with it, the overrides among the
trials numbered up to ``t`` stay at or below ``floor(share * n)``, ``n`` being how many trials (budget stubs
aside) are numbered up to ``t``. A lower-numbered trial still running whose proposal is not settled (another
worker asking its model) counts as an override, so workers together never exceed it either. Once the share is
used up the model is not asked.

An override passes what the lead mode's proposals pass (the strict parse onto the space, no config that a trial
holds, the claim between workers) and must give a reason with words. Anything else (a reply that repeats the
proposal, a refused reply, a failed endpoint) leaves the classical proposal in place, without a retry. The
endpoint's first failure is logged; later ones are only counted (``lmtune status``), and after ``breaker``
failures in a row the endpoint is left alone for ``cooldown`` trials.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from lmtune import attrs
from lmtune._compat import queued_params
from lmtune.errors import InputError
from lmtune.samplers.agent.sampler import STORED_CHARS, AgentSampler, EndpointFailed, _key, _record
from lmtune.samplers.agent.schema import REASON_CHARS, ReplyError, has_words, parse_reply

log = logging.getLogger(__name__)


def override_room(study: Study, trial: FrozenTrial, share: float) -> int:
    """How many overrides the bound still allows at ``trial``: ``floor(share * n)`` less the overrides among the
    lower-numbered trials (see the module docstring; a running one without a settled proposal counts as one)."""
    upto = [t for t in study.get_trials(deepcopy=False)
            if t.number <= trial.number and not t.user_attrs.get(attrs.BUDGET_REACHED)]
    taken = sum(1 for t in upto if t.number < trial.number and (
        t.user_attrs.get(attrs.AGENT_SOURCE) == "override"
        or (t.state == TrialState.RUNNING and attrs.AGENT_SOURCE not in t.user_attrs)))
    return math.floor(share * len(upto) + 1e-9) - taken


class CentaurSampler(AgentSampler):
    """The classical sampler (``fallback``) proposes every trial; the model may replace its proposal on at most
    ``override_share`` of the study's trials.

    Takes the ``AgentSampler``'s arguments (``retries`` aside: a reply that is no usable override means no
    override) and ``override_share``, between 0 (the model is never asked) and 1 (the registry's default:
    ``AGENT_OVERRIDE_SHARE``).
    """

    def __init__(self, space, *, override_share: float, **options: Any):
        if isinstance(override_share, bool) or not isinstance(override_share, int | float) \
                or not 0 <= override_share <= 1:
            raise InputError("agent_override_share", f"must be a share between 0 and 1, got {override_share!r}")
        if options.get("reason_chars", REASON_CHARS) == 0:
            raise InputError("agent_reason_chars", "the centaur mode stores the reason of every override, so the "
                             "reason needs room: give more than 0 characters")
        super().__init__(space, **options)
        self.override_share = float(override_share)
        self._warned = False  # the endpoint's first failure was logged

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space or set(search_space) <= set(queued_params(trial) or {}):
            _record(study, trial, {attrs.AGENT_SOURCE: "queued"})
            return {}
        proposal = self._fallback_config(study, trial)
        others = [t for t in study.get_trials(deepcopy=False)
                  if t.number != trial.number and not t.user_attrs.get(attrs.BUDGET_REACHED)]
        if sum(1 for t in others if t.params) < self.n_startup_trials:
            _record(study, trial, {attrs.AGENT_SOURCE: "startup"})
            return proposal
        if override_room(study, trial, self.override_share) < 1:
            return self._keep(study, trial, proposal, "share used")
        with self._lock:
            skipping = self._skip > 0
            self._skip -= skipping
        if skipping:
            return self._keep(study, trial, proposal, "endpoint skipped")
        return self._consult(study, trial, others, proposal)

    def _consult(self, study: Study, trial: FrozenTrial, others: list[FrozenTrial], proposal: dict[str, Any]
                 ) -> dict[str, Any]:
        """Ask the model about the proposal; its config if it is a valid override, else the proposal."""
        stats = {"prompt_tokens": 0, "reply_tokens": 0, "seconds": 0.0}
        try:
            text, diagnosis = self._advise(study, trial, others, proposal, stats)
        except EndpointFailed as exc:
            self._note_endpoint(str(exc))
            return self._keep(study, trial, proposal, "endpoint failed", stats, [str(exc)])
        self._note_endpoint(None)
        reason = ""
        try:
            config, reason = parse_reply(text, self.space)
            if _key(config, self.space) == _key(proposal, self.space):
                return self._keep(study, trial, proposal, "kept", stats, [], diagnosis, reason)
            if not has_words(reason):
                raise ReplyError(f"the reason {json.dumps(reason)} has no words; say in one sentence why your "
                                 "configuration should replace the proposal")
            self._refuse_held(config, self._held(others))
            self._hold(study, trial, config, proposal)
        except ReplyError as exc:
            return self._keep(study, trial, proposal, "refused", stats, [str(exc)], diagnosis, reason)
        _record(study, trial, {**self._usage(stats, []), attrs.AGENT_SOURCE: "override",
                               attrs.AGENT_ADVICE: "overridden", attrs.AGENT_PROPOSAL: _plain(proposal),
                               attrs.AGENT_REASON: reason[:STORED_CHARS],
                               attrs.AGENT_DIAGNOSIS: diagnosis[:STORED_CHARS]})
        return config

    def _advise(self, study: Study, trial: FrozenTrial, others: list[FrozenTrial], proposal: dict[str, Any],
                stats: dict[str, Any]) -> tuple[str, str]:
        """The Advisor's reply to the proposal and the Analyzer's diagnosis (``EndpointFailed`` if a call fails)."""
        values = self._prompt_values(study, others)
        try:
            diagnosis = self._analyze(trial, values, stats)
        except EndpointFailed as exc:
            raise EndpointFailed(f"analyzer call failed: {exc}") from None
        prompt = self.prompts.render("advisor", **values, diagnosis=diagnosis or "(none)",
                                     proposal=json.dumps(_plain(proposal)))
        try:
            text = self._call([self._system(), ("user", prompt)], self.optimizer_tokens, self._call_seed(trial, 1),
                              True, stats)
        except EndpointFailed as exc:
            raise EndpointFailed(f"advisor call failed: {exc}") from None
        return text, diagnosis

    def _hold(self, study: Study, trial: FrozenTrial, config: dict[str, Any], proposal: dict[str, Any]) -> None:
        """On a discrete pool, claim the override's config in place of the proposal; ``ReplyError`` (the proposal
        held again) when another trial holds it: an earlier one, or a later one that settled on it while this
        trial held the proposal."""
        if self._claims is None:
            return
        index = self.space.pool_index(config)
        if self._claims.claim(study, trial, index) and not any(
                self._claims.holds(t) == index for t in study.get_trials(deepcopy=False)
                if t.number > trial.number and not t.user_attrs.get(attrs.BUDGET_REACHED)):
            return
        self._claims.claim(study, trial, self.space.pool_index(proposal))
        raise ReplyError("another worker chose this configuration at the same moment")

    def _keep(self, study: Study, trial: FrozenTrial, proposal: dict[str, Any], advice: str,
              stats: dict[str, Any] | None = None, errors: tuple[str, ...] | list[str] = (), diagnosis: str = "",
              reason: str = "") -> dict[str, Any]:
        """Record why the proposal stands (``attrs.AGENT_ADVICE``) and return it."""
        values: dict[str, Any] = {attrs.AGENT_SOURCE: "base", attrs.AGENT_ADVICE: advice}
        if stats is not None:
            values.update(self._usage(stats, list(errors)))
        if diagnosis:
            values[attrs.AGENT_DIAGNOSIS] = diagnosis[:STORED_CHARS]
        if has_words(reason):
            values[attrs.AGENT_REASON] = reason[:STORED_CHARS]
        _record(study, trial, values)
        return proposal

    def _note_endpoint(self, error: str | None) -> None:
        """Count failures in a row (``breaker``, ``cooldown``); only the first failure of the study is logged."""
        with self._lock:
            self._failures = self._failures + 1 if error is not None else 0
            if self._failures >= self.breaker:
                self._failures, self._skip = 0, self.cooldown
            first = error is not None and not self._warned
            self._warned = self._warned or first
        if first:
            log.warning("the agent's endpoint failed (%s); the classical sampler's proposals stand, and later "
                        "failures are only counted (lmtune status)", error)


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    """A config as JSON can hold it (a sampler may hand out numpy numbers)."""
    return {name: value.item() if hasattr(value, "item") else value for name, value in config.items()}
