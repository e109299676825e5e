"""``AgentSampler``: a language model behind any OpenAI-compatible endpoint proposes each trial's config
(``--agent-mode lead``; the default, ``centaur``, makes the model an advisor of a classical sampler instead:
``lmtune.samplers.agent.centaur``).

"Small LLMs with Expert Blocks Are Good Enough for Hyperparameter Tuning" (arXiv:2509.15561): a deterministic
Trajectory Context Summarizer (``lmtune.trajectory``) turns the study into a report; an Analyzer block reads
it and writes a short diagnosis; an Optimizer block reads both and proposes the next config. What small local
models get wrong, the sampler makes safe: the Optimizer's reply is asked for as JSON constrained by a schema
built from the space (``response_format``; ``lmtune serve`` decodes under that grammar, so its replies parse by
construction), every reply is validated strictly and its numbers snapped onto the space, a config that any
trial holds (finished, running in another worker, just claimed) is refused, and a refused reply is asked for
again with the reason (at most ``retries`` times). When no usable config comes, or the endpoint fails, TPE (as
lmtune's registry builds it) proposes the trial and the reason is stored on the trial; the log says so at the
first fallback and then once every ``FALLBACK_LOG_EVERY`` fallbacks, not once per trial. After
``breaker`` trials in a row whose endpoint failed, the next ``cooldown`` trials go to TPE without a call, so a
dead server slows a study by a few timeouts, not by one per trial.

Per trial it stores prompt and reply tokens, cost, seconds, retries and whether (and why) it fell back
(``lmtune.attrs.AGENT_*``); ``lmtune status`` shows the fallback rate. With temperature 0 (or any temperature
and a seed, which lmtune passes per call) a deterministic endpoint gives a deterministic study.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from lmtune import attrs
from lmtune._compat import queued_params, set_trial_user_attr
from lmtune.errors import InputError
from lmtune.llm.generation import BackgroundLoop, GenerationRequest, Generator
from lmtune.samplers.agent.prompts import Prompts
from lmtune.samplers.agent.schema import (
    REASON_CHARS,
    ReplyError,
    config_schema,
    has_words,
    parse_reply,
    response_format,
)
from lmtune.samplers.claim import PoolClaims
from lmtune.space import SearchSpace, config_key
from lmtune.trajectory import report_text, summarize_study

log = logging.getLogger(__name__)

#: Longest reply or error text stored on a trial.
STORED_CHARS = 500
#: After the first fallback is logged, one summary line per this many fallbacks (a weak model falls back often).
FALLBACK_LOG_EVERY = 10


class EndpointFailed(RuntimeError):
    """The endpoint did not answer usefully (connection, timeout, HTTP error, no choices)."""


class AgentSampler(BaseSampler):
    """Analyzer and Optimizer blocks over the TCS report, with strict validation and a TPE fallback.

    Args:
        space: the search space (categorical, int, float, log); a discrete space's configs are claimed so that
            workers never share one (``lmtune.samplers.claim``).
        endpoint: base URL of an OpenAI-compatible server (``http://127.0.0.1:11434/v1`` for Ollama).
        model: the model name the endpoint serves.
        fallback: the sampler used for start-up trials and fallbacks (the registry passes its TPE).
        prompts: a folder overriding any of the prompt templates (``lmtune.samplers.agent.prompts``).
        n_startup_trials: trials proposed by the fallback before the model is asked.
        temperature: sampling temperature of both blocks (0: greedy).
        retries: Optimizer replies asked for again after a rejected one.
        timeout: seconds per call before it counts as failed.
        analyzer_tokens, optimizer_tokens: ``max_tokens`` of each block's reply.
        reason_chars: longest one-sentence reason the Optimizer writes before its config (0: none).
        price_per_million: dollars per million prompt and reply tokens, for the stored cost.
        breaker, cooldown: after ``breaker`` trials in a row whose endpoint failed, skip the endpoint for
            ``cooldown`` trials.
        check: check at once that the endpoint answers and serves ``model`` (``InputError("endpoint", ...)``).
        generator: a ``Generator`` to use instead of an ``OpenAIGenerator`` for ``endpoint``.
    """

    def __init__(self, space: SearchSpace, *, endpoint: str | None = None, model: str | None = None,
                 fallback: BaseSampler | None = None, prompts: str | None = None, seed: int | None = None,
                 n_startup_trials: int = 5, temperature: float = 0.0, retries: int = 2, timeout: float = 60.0,
                 analyzer_tokens: int = 256, optimizer_tokens: int = 400, reason_chars: int = REASON_CHARS,
                 price_per_million: tuple[float, float] = (0.0, 0.0), breaker: int = 3, cooldown: int = 5,
                 check: bool = True, generator: Generator | None = None):
        if generator is None and not endpoint:
            raise InputError("endpoint", "the agent sampler needs `endpoint`, the base URL of an OpenAI-compatible "
                             "server, e.g. http://127.0.0.1:11434/v1")
        if not model:
            raise InputError("agent_model", "name the model the endpoint serves in `agent_model`, e.g. "
                             "qwen2.5:7b-instruct")
        for name, value, low in (("retries", retries, 0), ("n_startup_trials", n_startup_trials, 0),
                                 ("analyzer_tokens", analyzer_tokens, 1), ("optimizer_tokens", optimizer_tokens, 1),
                                 ("breaker", breaker, 1), ("cooldown", cooldown, 0), ("reason_chars", reason_chars, 0)):
            if not isinstance(value, int) or value < low:
                raise InputError(name, f"must be an integer >= {low}, got {value!r}")
        if not timeout > 0:
            raise InputError("timeout", f"must be > 0 seconds, got {timeout!r}")
        self.space = space
        self.endpoint = endpoint
        self.model = model
        self.prompts = Prompts.load(prompts)
        self.prompts_dir = prompts
        self.n_startup_trials = n_startup_trials
        self.temperature = temperature
        self.retries = retries
        self.timeout = timeout
        self.analyzer_tokens = analyzer_tokens
        self.optimizer_tokens = optimizer_tokens
        self.prices = tuple(float(p) for p in price_per_million)
        self.breaker = breaker
        self.cooldown = cooldown
        self._seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
        if fallback is None:
            from optuna.samplers import TPESampler

            fallback = TPESampler(seed=seed, n_startup_trials=n_startup_trials)
        self.fallback = fallback
        self._schema = json.dumps(config_schema(space, reason_chars))
        self._format = json.dumps(response_format(space, reason_chars))
        self._claims = PoolClaims(space, key=attrs.DISTINCT_CLAIM) if space.is_discrete else None
        self._own_generator = generator is None
        self._generator = generator
        self._loop: BackgroundLoop | None = None
        self._lock = threading.Lock()
        self._failures = 0  # trials in a row whose endpoint failed
        self._skip = 0  # trials left to skip the endpoint
        self._unlogged: list[int] = []  # trials that fell back since the last log line
        self._logged = 0  # fallbacks already in a log line
        if check:
            self.check()

    # -- the endpoint ---------------------------------------------------------------------------------------

    @property
    def generator(self) -> Generator:
        with self._lock:
            if self._generator is None:
                from lmtune.llm.openai_compat import OpenAIGenerator

                self._generator = OpenAIGenerator(self.endpoint, max_retries=1, timeout=self.timeout, backoff=0.5,
                                                  max_backoff=2.0)
            if self._loop is None:
                self._loop = BackgroundLoop()
            return self._generator

    def check(self) -> None:
        """``InputError`` unless the endpoint answers and (when it lists models) serves ``model``."""
        generator = self.generator
        self._loop.run(generator.check())
        served = self._loop.run(_served_models(generator))
        if served is not None and self.model not in served:
            raise InputError("agent_model", f"{self.endpoint} does not serve {self.model!r}; it serves: "
                             f"{', '.join(sorted(served)[:10]) or 'nothing'}")

    def _call(self, messages: list[tuple[str, str]], max_tokens: int, seed: int, schema: bool,
              stats: dict[str, Any]) -> str:
        request = GenerationRequest(model=self.model, messages=tuple(messages), max_tokens=max_tokens,
                                    temperature=self.temperature, seed=seed,
                                    response_format=self._format if schema else None)
        generator = self.generator
        started = time.perf_counter()
        try:
            result = self._loop.run(_with_timeout(generator.generate(request), self.timeout * 3))
        except Exception as exc:  # any failure of the endpoint or the client: never the study's crash
            raise EndpointFailed(" ".join(f"{type(exc).__name__}: {exc}".split())[:300]) from None
        finally:
            stats["seconds"] += time.perf_counter() - started
        stats["prompt_tokens"] += int(result.prompt_tokens)
        stats["reply_tokens"] += int(result.completion_tokens)
        if not result.texts:
            raise EndpointFailed("the endpoint returned no choices")
        return result.texts[0]

    # -- Optuna sampler interface ---------------------------------------------------------------------------

    def reseed_rng(self) -> None:
        self._seed = int(np.random.SeedSequence().generate_state(1)[0])
        self.fallback.reseed_rng()

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.fallback.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values) -> None:
        self.fallback.after_trial(study, trial, state, values)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.space.distributions()

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        """Parameters outside the space are the fallback's."""
        return self.fallback.sample_independent(study, trial, param_name, param_distribution)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space or set(search_space) <= set(queued_params(trial) or {}):
            _record(study, trial, {attrs.AGENT_SOURCE: "queued"})
            return {}
        others = [t for t in study.get_trials(deepcopy=False)
                  if t.number != trial.number and not t.user_attrs.get(attrs.BUDGET_REACHED)]
        if sum(1 for t in others if t.params) < self.n_startup_trials:
            _record(study, trial, {attrs.AGENT_SOURCE: "startup"})
            return self._fallback_config(study, trial)
        stats = {"prompt_tokens": 0, "reply_tokens": 0, "seconds": 0.0}
        with self._lock:
            skipping = self._skip > 0
            self._skip -= skipping
        if skipping:
            reason = f"endpoint skipped after {self.breaker} trials in a row whose calls failed"
            return self._fall_back(study, trial, reason, stats, [], "")
        config, reason, errors, diagnosis, endpoint_failed = self._ask(study, trial, others, stats)
        with self._lock:
            self._failures = self._failures + 1 if endpoint_failed else 0
            if self._failures >= self.breaker:
                self._failures, self._skip = 0, self.cooldown
                log.warning("the agent's endpoint failed on %d trials in a row; the next %d go to TPE without "
                            "asking it", self.breaker, self.cooldown)
        if config is None:
            return self._fall_back(study, trial, reason, stats, errors, diagnosis)
        _record(study, trial, {**self._usage(stats, errors), attrs.AGENT_SOURCE: "agent",
                               attrs.AGENT_FELL_BACK: False, attrs.AGENT_DIAGNOSIS: diagnosis[:STORED_CHARS],
                               **({attrs.AGENT_REASON: reason[:STORED_CHARS]} if has_words(reason) else {})})
        return config

    # -- the two blocks -------------------------------------------------------------------------------------

    def _ask(self, study: Study, trial: FrozenTrial, others: list[FrozenTrial], stats: dict[str, Any]
             ) -> tuple[dict[str, Any] | None, str, list[str], str, bool]:
        """Analyzer, then Optimizer with retries: (config or None, reason, errors, diagnosis, endpoint failed)."""
        values = self._prompt_values(study, others)
        errors: list[str] = []
        try:
            diagnosis = self._analyze(trial, values, stats)
        except EndpointFailed as exc:
            return None, f"analyzer call failed: {exc}", errors, "", True
        messages = [self._system(),
                    ("user", self.prompts.render("optimizer", **values, diagnosis=diagnosis or "(none)"))]
        held = self._held(others)
        for attempt in range(self.retries + 1):
            try:
                text = self._call(messages, self.optimizer_tokens, self._call_seed(trial, attempt + 1), True, stats)
            except EndpointFailed as exc:
                return None, f"optimizer call failed: {exc}", errors, diagnosis, True
            try:
                config, reason = parse_reply(text, self.space)
                self._refuse_held(config, held)
                if self._claims is not None and not self._claims.claim(study, trial, self.space.pool_index(config)):
                    raise ReplyError("another worker chose this configuration at the same moment; propose another")
                return config, reason, errors, diagnosis, False
            except ReplyError as exc:
                errors.append(str(exc))
                messages += [("assistant", text[:2000]), ("user", self.prompts.render("retry", error=str(exc)))]
        return None, f"no usable config after {self.retries + 1} replies; last: {errors[-1]}", errors, diagnosis, False

    def _prompt_values(self, study: Study, others: list[FrozenTrial]) -> dict[str, str]:
        """The placeholders every block's prompt may use: goal, space, the TCS report of the trials, the schema."""
        report = summarize_study(others, space=self.space, direction=study.direction.name.lower())
        return {"goal": f"{report['direction']} {report['metric']}", "space": _describe(self.space),
                "report": report_text(report), "schema": self._schema}

    def _system(self) -> tuple[str, str]:
        return "system", self.prompts.render("system")

    def _analyze(self, trial: FrozenTrial, values: dict[str, str], stats: dict[str, Any]) -> str:
        """The Analyzer's diagnosis (``EndpointFailed`` when its call fails)."""
        return self._call([self._system(), ("user", self.prompts.render("analyzer", **values))],
                          self.analyzer_tokens, self._call_seed(trial, 0), False, stats).strip()

    def _held(self, others: list[FrozenTrial]) -> dict[str, tuple[int, str]]:
        """Config key -> (trial number, what it is) of every config a trial holds."""
        held = {}
        for t in others:
            config = t.params or None
            if not config and self._claims is not None:
                index = self._claims.holds(t)
                config = None if index is None else self.space.pool_config(index)
            if config and all(p.name in config for p in self.space.params):
                value = f", value {t.value:.4g}" if t.value is not None else ""
                what = (f"is running now in trial {t.number}" if t.state == TrialState.RUNNING
                        else f"was already tried (trial {t.number}, {t.state.name}{value})")
                held[_key(config, self.space)] = (t.number, what)
        return held

    def _refuse_held(self, config: dict[str, Any], held: dict[str, tuple[int, str]]) -> None:
        found = held.get(_key(config, self.space))
        if found is not None:
            shown = ", ".join(f"{k}={v}" for k, v in config.items())
            raise ReplyError(f"the configuration {shown} {found[1]}; propose one that no trial holds")

    # -- fallback and bookkeeping ---------------------------------------------------------------------------

    def _fall_back(self, study: Study, trial: FrozenTrial, reason: str, stats: dict[str, Any], errors: list[str],
                   diagnosis: str) -> dict[str, Any]:
        self._log_fallback(trial.number, reason)
        _record(study, trial, {**self._usage(stats, errors), attrs.AGENT_SOURCE: "fallback",
                               attrs.AGENT_FELL_BACK: True, attrs.AGENT_FALLBACK_REASON: reason[:STORED_CHARS],
                               attrs.AGENT_DIAGNOSIS: diagnosis[:STORED_CHARS]})
        return self._fallback_config(study, trial)

    def _log_fallback(self, number: int, reason: str) -> None:
        """The first fallback in a line of its own, then one line per ``FALLBACK_LOG_EVERY`` fallbacks."""
        with self._lock:
            self._unlogged.append(number)
            first = self._logged == 0
            if not first and len(self._unlogged) < FALLBACK_LOG_EVERY:
                return
            trials, self._unlogged = self._unlogged, []
            self._logged += len(trials)
            total = self._logged
        if first:
            log.warning("trial %d: the agent fell back to TPE: %s (later fallbacks: one line per %d)", number,
                        reason, FALLBACK_LOG_EVERY)
        else:
            log.warning("the agent fell back to TPE on %d more trials (%d to %d; %d in all); the last: %s",
                        len(trials), trials[0], trials[-1], total, reason)

    def _fallback_config(self, study: Study, trial: FrozenTrial) -> dict[str, Any]:
        space = self.fallback.infer_relative_search_space(study, trial)
        config = dict(self.fallback.sample_relative(study, trial, space)) if space else {}
        for name, distribution in self.space.distributions().items():
            if name not in config:
                config[name] = self.fallback.sample_independent(study, trial, name, distribution)
        return config

    def _usage(self, stats: dict[str, Any], errors: list[str]) -> dict[str, Any]:
        cost = (stats["prompt_tokens"] * self.prices[0] + stats["reply_tokens"] * self.prices[1]) / 1e6
        return {attrs.AGENT_PROMPT_TOKENS: stats["prompt_tokens"], attrs.AGENT_REPLY_TOKENS: stats["reply_tokens"],
                attrs.AGENT_COST: cost, attrs.AGENT_SECONDS: round(stats["seconds"], 4),
                attrs.AGENT_RETRIES: len(errors), attrs.AGENT_ERRORS: [e[:STORED_CHARS] for e in errors]}

    def _call_seed(self, trial: FrozenTrial, call: int) -> int:
        return int(np.random.SeedSequence([self._seed, trial.number, call]).generate_state(1)[0] % 2**31)

    def __getstate__(self) -> dict[str, Any]:
        state = {**self.__dict__, "_loop": None, "_lock": None}
        if self._own_generator:
            state["_generator"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def _record(study: Study, trial: FrozenTrial, values: dict[str, Any]) -> None:
    for key, value in values.items():
        set_trial_user_attr(study, trial, key, value)


def _key(config: dict[str, Any], space: SearchSpace) -> str:
    return config_key({p.name: config[p.name] for p in space.params})


def _describe(space: SearchSpace) -> str:
    lines = [f"- {p.name}: {p.describe()}" for p in space.params]
    if space.fixed:
        lines.append("Fixed (not searched): " + ", ".join(f"{k}={v}" for k, v in space.fixed.items()))
    return "\n".join(lines)


async def _served_models(generator: Generator) -> set[str] | None:
    """The model ids the endpoint lists, or None when it cannot list them (not every server implements it)."""
    client = getattr(generator, "client", None)
    if client is None:
        return None
    try:
        page = await client.with_options(timeout=10.0, max_retries=0).models.list()
        return {m.id for m in page.data}
    except Exception:  # noqa: BLE001  (a server without /models is still usable)
        return None


async def _with_timeout(coroutine, seconds: float):
    import asyncio

    return await asyncio.wait_for(coroutine, seconds)
