"""``tune_inference``: the budget-constrained search as a resumable Optuna study, then a held-out test.

Input is checked first (task, templates, prices, metric, budgets, endpoint), so bad input leaves nothing in storage.
Each trial is one config (``Evaluator``); a config over the per-instance budget is stored PRUNED with its reason and
estimated cost, one that could not be evaluated (endpoint error, budget spent mid-way) FAIL with its reason; neither
gets a score. The first trial is the space's low-cost corner. The study stops when the next call would not fit in the
optimization budget, or when the backend keeps failing or reports usage a request cannot bill (``stopped ==
"endpoint"``, the reason in ``error``; the CLI exits 1 and the test split is not run). Running the same command again
resumes: the spend so far is the study's account in its spend journal (every call that may have been billed), trials
an earlier process left running are failed and queued again, pruning knowledge is rebuilt from the trials, and the
response cache answers what was already asked (counted as cached spend). SIGTERM is an interrupt, like Ctrl-C.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lmtune import attrs
from lmtune.config import build_config, check_writable_folder
from lmtune.errors import InputError
from lmtune.extras import require
from lmtune.files import write_atomic
from lmtune.inference.config import InferConfig
from lmtune.inference.evaluate import Evaluator
from lmtune.inference.final import record_final, track_run
from lmtune.inference.metrics import check_responses, make_instance_metric
from lmtune.inference.prices import PriceTable
from lmtune.inference.pruning import PruningKnowledge
from lmtune.inference.resume import open_journal, spend_account
from lmtune.inference.space import InferencePoint, InferenceSpace
from lmtune.inference.spend import BudgetExhausted, MeteredGenerator, SpendLedger
from lmtune.inference.tasks import InferTask, load_infer_task
from lmtune.llm.cache import CachedGenerator, ResponseStore
from lmtune.llm.generation import BackgroundLoop, GenerationError, Generator, stop_text
from lmtune.pareto import pareto_front
from lmtune.report.trackers import check_trackers
from lmtune.results import Result
from lmtune.runtime.loop import Interrupted, TrialListener, run_trials, sigterm_as_interrupt
from lmtune.runtime.orphans import fail_dead_trials
from lmtune.runtime.study import open_study
from lmtune.runtime.trials import counted_trials

#: Consecutive failed trials (endpoint errors) after which the search stops instead of burning trials.
MAX_CONSECUTIVE_FAILURES = 5
#: A config scoring 0 solved no instance: the floor every metric of ``lmtune infer`` starts from.
NOTHING_SOLVED = {"value": 0.0, "label": "solved nothing", "what": "no instance answered correctly"}

log = logging.getLogger(__name__)


@dataclass
class InferResult(Result):
    """What ``lmtune infer`` found and spent; ``to_dict()`` is ``results.json``."""

    study_name: str
    task: str
    metric: str
    models: list[str]
    inference_budget: float
    optimization_budget: float
    spend: dict[str, float]
    trials: dict[str, int]
    configs_scored: int
    configs_pruned_by_knowledge: int
    configs_over_budget_measured: int
    tuning_instances: int
    test_instances: int
    best: dict[str, Any] | None = None
    pareto_front: list[dict[str, Any]] = field(default_factory=list)
    #: Why the search stopped: "max_trials", "budget" (the next call did not fit), "endpoint" (the backend kept
    #: failing, or reported usage a request cannot bill; ``error`` says how), or "done" (no trial left to run).
    stopped: str = "done"
    #: The backend's last failure when it stopped the search or the test evaluation, else None.
    error: str | None = None
    #: Things the user should act on, e.g. a best config that solves nothing, with a budget to try instead.
    warnings: list[str] = field(default_factory=list)


def tune_inference(config: InferConfig | None = None, *, generator: Generator | None = None,
                   listener: TrialListener | None = None, **fields: Any) -> InferResult:
    """Run (or resume) the search and return the results (also written to ``output_dir/results.json``).

    ``generator`` replaces the backend named by ``endpoint`` or ``local_model`` (then ``models`` names what it
    serves); ``listener`` sees the trials (the CLI draws its progress from it). Ctrl-C or SIGTERM raises
    ``Interrupted`` once the calls in flight have finished (briefly) or been given up (at their worst case).
    """
    s = config or build_config(InferConfig, **fields)
    check_trackers(s.track)
    started = datetime.datetime.now()
    try:
        with sigterm_as_interrupt():
            results = _tune(s, generator, listener)
    except KeyboardInterrupt:
        raise Interrupted("before the search started; nothing was spent") from None
    if s.track:
        track_run(s, results.study_name, results.best, results.spend, started)
    return results


def _tune(s: InferConfig, generator: Generator | None, listener: TrialListener | None) -> InferResult:
    check_writable_folder(s.output_dir, "output_dir")
    stops = [tuple(x) if x else None for x in s.stops] or None
    task = load_infer_task(s.task, templates=s.templates or None, stops=stops, size=s.task_size, seed=s.seed)
    metric, needs_check = make_instance_metric(s.metric)
    check_responses(s.metric, s.n)
    prices = PriceTable.load(s.prices)
    # On an interrupt, calls in flight get until their timeout (10 s at most) to finish and be recorded.
    loop = BackgroundLoop(drain=min(s.timeout, 10.0))
    journal = cache = None
    try:
        generator, models = _backend(s, generator, loop)
        for model in models:
            prices[model]  # noqa: B018  (an unknown model is an input error now, not a crash mid-search)
        space = InferenceSpace(models=models, templates=len(task.templates), stops=len(task.stops),
                               sampling=s.sampling, temperature=tuple(s.temperature), top_p=tuple(s.top_p),
                               top_k=tuple(s.top_k) if s.top_k else None, repetition_penalty=s.repetition_penalty,
                               max_tokens=tuple(s.max_tokens or task.max_tokens), n=tuple(s.n))
        tuning, test = task.split(s.test_fraction, s.seed)
        study_name = s.study_name or f"infer-{Path(task.name).stem}"
        study_attrs = {"lmtune_infer": {"task": s.task, "models": models, "space": space.describe(),
                                        "metric": s.metric, "inference_budget": s.inference_budget,
                                        "templates": task.templates, "seed": s.seed,
                                        "stops": [list(x) if x else None for x in task.stops],
                                        "task_size": s.task_size, "test_fraction": s.test_fraction,
                                        "pruning": s.pruning}}
        study = open_study(study_name, storage=s.storage, sampler=optuna.samplers.TPESampler(seed=s.seed),
                           direction="maximize", attrs=study_attrs, metric_names=[s.metric],
                           info={attrs.CONSTANT_SCORE: NOTHING_SOLVED})
        study.set_user_attr(attrs.OPTIMIZATION_BUDGET, s.optimization_budget)
        fail_dead_trials(study)
        trials = study.get_trials(deepcopy=False)
        cache_path = s.cache or Path(s.output_dir or ".") / "responses.sqlite"
        cache = None if s.cache == "none" else ResponseStore(cache_path)
        journal = open_journal(study, cache, s.output_dir)
        account = spend_account(study, journal, trials)
        ledger = SpendLedger(s.optimization_budget, journal=journal, account=account,
                             cached=sum(t.user_attrs.get(attrs.CACHED_SPEND, 0.0) for t in trials))
        metered = MeteredGenerator(CachedGenerator(generator, cache), prices, ledger, stop=loop.stopping,
                                   concurrency=s.concurrency if s.endpoint is not None else None)
        evaluator = Evaluator(task, tuning, metric, needs_check, metered, loop, s.inference_budget,
                              pruning=s.pruning, knowledge=_knowledge_from(trials), seed=s.seed)
        if not trials:
            study.enqueue_trial(space.low_cost_params(prices))
        try:
            stopped, error = _search(study, space, evaluator, ledger, s.max_trials, listener)
            results = _results(study, s, evaluator, test, ledger, study_name, stopped, error)
            record_final(study, results.best, results.spend, s.metric, len(test))
        except (Interrupted, KeyboardInterrupt):
            raise Interrupted(f"spent {ledger.spent:.6g} of {s.optimization_budget:.6g}") from None
    finally:
        if generator is not None:
            with contextlib.suppress(Exception):
                loop.run(generator.aclose())
        loop.close()
        for store in {id(x): x for x in (cache, journal and journal.store) if x is not None}.values():
            store.close()
    if s.output_dir is not None:
        write_atomic(Path(s.output_dir) / "results.json", json.dumps(results.to_dict(), indent=2))
    return results


def _backend(s: InferConfig, generator: Generator | None, loop: BackgroundLoop) -> tuple[Generator, list[str]]:
    if generator is not None:
        if not s.models:
            raise InputError("models", "name the model(s) the generator serves")
        return generator, list(s.models)
    if (s.endpoint is None) == (s.local_model is None):
        raise InputError("endpoint", "give exactly one of `endpoint` (a URL) or `local_model` (a path)")
    if s.endpoint is not None:
        require("openai", "endpoint")
        from lmtune.llm.openai_compat import OpenAIGenerator

        if not s.models:
            raise InputError("models", "name the endpoint's model(s) to search in `models`, e.g. gpt-4o-mini,gpt-4o")
        generator = OpenAIGenerator(s.endpoint, api_key_env=s.api_key_env, concurrency=s.concurrency,
                                    timeout=s.timeout, max_retries=s.retries)
        loop.run(generator.check())
        return generator, list(s.models)
    from lmtune.llm import check_device
    from lmtune.llm.local import LocalGenerator

    generator = LocalGenerator(s.local_model, device=check_device(s.device))
    if s.models and s.models != [generator.name]:
        raise InputError("models", f"a local model is one model, {generator.name!r}; leave `models` out")
    return generator, [generator.name]


def _knowledge_from(trials) -> PruningKnowledge:
    knowledge = PruningKnowledge()
    for t in trials:
        if attrs.VALID in t.user_attrs and attrs.TOKEN_KEY in t.user_attrs and not t.user_attrs.get(attrs.INFERRED):
            knowledge.record(t.user_attrs[attrs.TOKEN_KEY], t.params["n"], t.params["max_tokens"],
                             t.user_attrs[attrs.VALID])
    return knowledge


def _search(study, space: InferenceSpace, evaluator: Evaluator, ledger: SpendLedger, max_trials: int,
            listener: TrialListener | None) -> tuple[str, str | None]:
    """Run the trials; returns why the search stopped and the backend's last failure (see ``InferResult``)."""
    state = {"exhausted": False, "failures": 0, "results": 0, "error": None}

    def objective(trial: optuna.Trial) -> float:
        config = space.suggest(trial)
        spent0, cached0 = ledger.session, ledger.cached

        def store_spend():
            trial.set_user_attr(attrs.SPEND, ledger.session - spent0)
            trial.set_user_attr(attrs.CACHED_SPEND, ledger.cached - cached0)

        trial.set_user_attr(attrs.TOKEN_KEY, config.token_key)
        trial.set_user_attr(attrs.TEMPLATE_TEXT, evaluator.task.templates[config.template])
        trial.set_user_attr(attrs.STOP_TEXT, stop_text(evaluator.task.stops[config.stop]))
        try:
            result = evaluator.evaluate(config, on_progress=store_spend)
        except BudgetExhausted as exc:
            state["exhausted"] = True
            trial.set_user_attr(attrs.FAIL_REASON, f"optimization budget exhausted: {exc}")
            raise
        except GenerationError as exc:
            state["failures"] += 1
            state["error"] = " ".join(str(exc).split())[:400]
            trial.set_user_attr(attrs.FAIL_REASON, f"generation failed: {exc}"[:500])
            raise
        finally:
            store_spend()
            study.set_user_attr(attrs.SPEND, ledger.spent)  # the study's total, for progress lines
        state["failures"] = 0
        state["results"] += 1
        trial.set_user_attr(attrs.INSTANCES, result.instances)
        if result.cost_per_instance is not None:
            trial.set_user_attr(attrs.COST_PER_INSTANCE, result.cost_per_instance)
        if not result.inferred:
            trial.set_user_attr(attrs.VALID, result.feasible)
        else:
            trial.set_user_attr(attrs.INFERRED, True)
        if not result.feasible:
            trial.set_user_attr(attrs.INFEASIBLE, result.reason)
            raise optuna.TrialPruned(result.reason)
        return result.quality

    def stop(_: optuna.Study) -> bool:
        return (state["exhausted"] or state["failures"] >= MAX_CONSECUTIVE_FAILURES or ledger.left <= 0
                or evaluator.generator.misbehaved is not None)

    run_trials(study, objective, max_trials, listener=listener, catch=(BudgetExhausted, GenerationError),
               stop_when=stop)
    return _stopped(study, state, evaluator.generator.misbehaved, ledger, max_trials)


def _stopped(study, state: dict, misbehaved: str | None, ledger: SpendLedger, max_trials: int
             ) -> tuple[str, str | None]:
    """Why the search stopped. The backend is to blame when its bills cannot be trusted (``misbehaved``), when it
    failed trials in a row, or failed every trial of this run that ended before the budget did (calls that time
    out keep their worst case, so they can use the budget up first)."""
    if misbehaved is not None:
        return "endpoint", misbehaved
    if state["failures"] >= MAX_CONSECUTIVE_FAILURES or (state["error"] and not state["results"]):
        return "endpoint", f"{state['failures'] or 'every'} trial(s) in a row failed; the last: {state['error']}"
    if state["exhausted"] or ledger.left <= 0:
        return "budget", None
    if len(counted_trials(study)) >= max_trials:
        return "max_trials", None
    return "done", None


def point_of(trial) -> InferencePoint:
    """The config a trial evaluated."""
    p = trial.params
    return InferencePoint(model=p["model"], template=p["template"], stop=p["stop"], max_tokens=p["max_tokens"],
                          n=p["n"], temperature=p.get("temperature"), top_p=p.get("top_p"), top_k=p.get("top_k"),
                          repetition_penalty=p.get("repetition_penalty"))


def _results(study, s: InferConfig, evaluator: Evaluator, test: list[dict], ledger: SpendLedger, study_name: str,
             stopped: str, error: str | None) -> InferResult:
    """What the search found (the best config within the per-instance budget, the cost/quality front) and spent,
    each chosen config then tested on the held-out split unless the backend stopped the search."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE
                and t.user_attrs.get(attrs.COST_PER_INSTANCE, float("inf")) <= s.inference_budget]
    results = _counts(trials, complete, s, ledger, study_name, (len(evaluator.instances), len(test)), stopped, error)
    if evaluator.generator.misbehaved is not None:
        results.warnings.append(evaluator.generator.misbehaved)
    if not complete:
        return results
    best = max(complete, key=lambda t: (t.value, -t.user_attrs[attrs.COST_PER_INSTANCE], -t.number))
    front = [t for _, _, t in pareto_front([(t.user_attrs[attrs.COST_PER_INSTANCE], t.value, t) for t in complete])]
    results.best = _described(best, evaluator.task)
    results.pareto_front = [_described(t, evaluator.task) for t in front]
    if best.value <= NOTHING_SOLVED["value"]:
        results.best["solved_nothing"] = True
        results.warnings.append(_budget_advice(trials, s, ledger))
        log.warning(results.warnings[-1])
    if stopped == "endpoint":  # the test evaluation would fail the same way
        return results
    _test(results, evaluator, test, best, front, s)
    return results


def _counts(trials: list[FrozenTrial], complete: list[FrozenTrial], s: InferConfig, ledger: SpendLedger,
            study_name: str, instances: tuple[int, int], stopped: str, error: str | None) -> InferResult:
    """The result before anything is chosen: the search's spend, its trials by state and outcome (``complete``:
    those scored within the per-instance budget) and the (tuning, test) instances."""
    by_state = {state.name: sum(1 for t in trials if t.state == state) for state in TrialState}
    return InferResult(
        study_name=study_name, task=s.task, metric=s.metric,
        models=sorted({t.params.get("model") for t in trials if t.params}),
        inference_budget=s.inference_budget, optimization_budget=s.optimization_budget,
        spend={"real": ledger.spent, "unsettled": ledger.unsettled, "cached": ledger.cached, "calls": ledger.calls,
               "cached_calls": ledger.cached_calls},
        trials={k: v for k, v in by_state.items() if v},
        configs_scored=len(complete),
        configs_pruned_by_knowledge=sum(1 for t in trials if t.user_attrs.get(attrs.INFERRED)),
        configs_over_budget_measured=sum(1 for t in trials if t.state == TrialState.PRUNED
                                         and not t.user_attrs.get(attrs.INFERRED)),
        tuning_instances=instances[0], test_instances=instances[1], stopped=stopped, error=error,
    )


def _described(trial: FrozenTrial, task: InferTask) -> dict:
    return {"trial": trial.number, "config": _readable(point_of(trial), task),
            "tuning": {"quality": trial.value, "cost_per_instance": trial.user_attrs[attrs.COST_PER_INSTANCE]}}


def _test(results: InferResult, evaluator: Evaluator, test: list[dict], best: FrozenTrial, front: list[FrozenTrial],
          s: InferConfig) -> None:
    """Test the best config, and the ``front`` if ``s.test_pareto``, on the held-out split (each config once),
    paid apart from the optimization budget, in an account of its own; a backend failure is the result's
    ``error``."""
    metered = evaluator.generator
    ledger = SpendLedger(None, journal=metered.ledger.journal, account=f"{metered.ledger.account}:test")
    tester = Evaluator(evaluator.task, test, evaluator.metric, evaluator.needs_check,
                       MeteredGenerator(metered.generator, metered.prices, ledger, concurrency=metered.concurrency,
                                        stop=metered.stop),
                       evaluator.loop, float("inf"), pruning=False, seed=evaluator.seed, salt="test")
    tested: dict[int, dict] = {}

    def on_test(trial: FrozenTrial) -> dict:
        if trial.number not in tested:
            result = tester.evaluate(point_of(trial))
            tested[trial.number] = {"quality": result.quality, "cost_per_instance": result.cost_per_instance,
                                    "within_inference_budget": result.cost_per_instance <= s.inference_budget}
        return tested[trial.number]

    try:
        results.best["test"] = on_test(best)
        if s.test_pareto:
            for entry, trial in zip(results.pareto_front, front, strict=True):
                entry["test"] = on_test(trial)
    except GenerationError as exc:
        results.error = f"the test evaluation failed: {' '.join(str(exc).split())[:400]}"
    results.spend["test_real"] = ledger.spent
    results.spend["test_cached"] = ledger.cached


def _budget_advice(trials, s: InferConfig, ledger: SpendLedger) -> str:
    """What to try when the best config within the per-instance budget solves nothing: a per-instance budget that
    admits the cheapest config measured over it (rounded up), or, when no config was over it, a wider space;
    and more search budget if it ran out."""
    over = sorted(cost for t in trials if t.state == TrialState.PRUNED and not t.user_attrs.get(attrs.INFERRED)
                  and (cost := t.user_attrs.get(attrs.COST_PER_INSTANCE, 0.0)) > s.inference_budget * (1 + 1e-9))
    advice = (f"the best config within `inference_budget` {s.inference_budget:g} solves no instance "
              f"({s.metric} 0 on the tuning split): ")
    if over:
        suggested = _round_up(over[0])
        advice += (f"try `inference_budget` {suggested:g} (the cheapest config measured above {s.inference_budget:g} "
                   f"costs {over[0]:.3g} per instance)")
    else:
        advice += ("no config tried was over that budget, so the budget is not what limits: widen `max_tokens` or "
                   "`n`, or check the template and the metric")
    if ledger.left is not None and ledger.left < 0.1 * s.optimization_budget:
        advice += f"; more configs need a larger `optimization_budget` (all but {ledger.left:.3g} of " \
                  f"{s.optimization_budget:g} was spent)"
    return advice


def _round_up(value: float) -> float:
    """``value`` rounded up to two significant digits (a budget that admits it)."""
    scale = 10 ** (math.floor(math.log10(value)) - 1)
    return math.ceil(value / scale - 1e-9) * scale


def _readable(config: InferencePoint, task: InferTask) -> dict:
    d = config.as_dict()
    d["template"] = task.templates[config.template]
    stop = task.stops[config.stop]
    d["stop"] = list(stop) if stop else None
    return {k: v for k, v in d.items() if v is not None or k == "stop"}


