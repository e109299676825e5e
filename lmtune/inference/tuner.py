"""``tune_inference``: the budget-constrained search as a resumable Optuna study, then a held-out test.

Input is checked first (task, templates, prices of every model, metric, budgets, endpoint reachable), so bad
input leaves nothing in storage. Each trial is one config (``Evaluator``); a config over the per-instance
budget is stored PRUNED with its reason and its estimated cost, a config that could not be evaluated (endpoint
error, budget exhausted mid-way) FAIL with its reason; neither ever gets a score. The first trial is the
low-cost corner of the space. The study stops when the next call would not fit in the optimization budget.
Running the same command again resumes: the spend so far is read back from the trials, pruning knowledge is
rebuilt from them, and the response cache answers what was already asked (counted as cached spend).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lmtune import attrs
from lmtune.config import build_config
from lmtune.errors import InputError
from lmtune.files import write_atomic
from lmtune.inference.config import InferConfig, parse_range, parse_stop  # noqa: F401  (public names)
from lmtune.inference.evaluate import Evaluator
from lmtune.inference.metrics import make_metric
from lmtune.inference.prices import PriceTable
from lmtune.inference.pruning import PruningKnowledge
from lmtune.inference.space import InferenceConfig, InferenceSpace
from lmtune.inference.spend import BudgetExhausted, MeteredGenerator, SpendLedger
from lmtune.inference.tasks import Task, load_task
from lmtune.llm.cache import CachedGenerator, ResponseCache
from lmtune.llm.generation import BackgroundLoop, GenerationError, Generator
from lmtune.results import Result
from lmtune.runtime.loop import Interrupted, TrialListener, run_trials
from lmtune.runtime.study import open_study

#: Consecutive failed trials (endpoint errors) after which the search stops instead of burning trials.
MAX_CONSECUTIVE_FAILURES = 5

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


def __getattr__(name: str) -> Any:
    if name == "InferSettings":  # renamed in 0.2
        import warnings

        warnings.warn("InferSettings is now lmtune.inference.InferConfig", DeprecationWarning, stacklevel=2)
        return InferConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def tune_inference(config: InferConfig | None = None, *, generator: Generator | None = None,
                   listener: TrialListener | None = None, **fields: Any) -> InferResult:
    """Run (or resume) the search and return the results (also written to ``output_dir/results.json``).

    ``generator`` replaces the backend named by ``endpoint`` or ``local_model`` (then ``models`` names what it
    serves); ``listener`` sees the trials (the CLI draws its progress from it).
    """
    s = config or build_config(InferConfig, **fields)
    stops = [tuple(x) if x else None for x in s.stops] or None
    task = load_task(s.task, templates=s.templates or None, stops=stops, size=s.task_size, seed=s.seed)
    metric, needs_check = make_metric(s.metric)
    prices = PriceTable.load(s.prices)
    loop = BackgroundLoop()
    generator, models = _backend(s, generator, loop)
    for model in models:
        prices[model]  # noqa: B018  (an unknown model is an input error now, not a crash mid-search)
    space = InferenceSpace(models=models, templates=len(task.templates), stops=len(task.stops), sampling=s.sampling,
                           temperature=tuple(s.temperature), top_p=tuple(s.top_p),
                           top_k=tuple(s.top_k) if s.top_k else None, repetition_penalty=s.repetition_penalty,
                           max_tokens=tuple(s.max_tokens or task.max_tokens), n=tuple(s.n))
    tuning, test = task.split(s.test_fraction, s.seed)
    study_name = s.study_name or f"infer-{Path(task.name).stem}"
    study_attrs = {"lmtune_infer": {"task": s.task, "models": models, "space": space.describe(), "metric": s.metric,
                                    "inference_budget": s.inference_budget, "templates": task.templates,
                                    "stops": [list(x) if x else None for x in task.stops], "seed": s.seed,
                                    "task_size": s.task_size, "test_fraction": s.test_fraction,
                                    "pruning": s.pruning}}
    study = open_study(study_name, storage=s.storage, sampler=optuna.samplers.TPESampler(seed=s.seed),
                       direction="maximize", attrs=study_attrs)
    study.set_user_attr(attrs.OPTIMIZATION_BUDGET, s.optimization_budget)
    trials = study.get_trials(deepcopy=False)
    ledger = SpendLedger(s.optimization_budget, spent=sum(t.user_attrs.get(attrs.SPEND, 0.0) for t in trials),
                         cached=sum(t.user_attrs.get(attrs.CACHED_SPEND, 0.0) for t in trials))
    cache_path = s.cache or Path(s.output_dir or ".") / "responses.sqlite"
    cache = None if s.cache == "none" else ResponseCache(cache_path)
    metered = MeteredGenerator(CachedGenerator(generator, cache), prices, ledger)
    evaluator = Evaluator(task, tuning, metric, needs_check, metered, loop,
                          s.inference_budget, pruning=s.pruning, knowledge=_knowledge_from(trials), seed=s.seed)
    if not trials:
        study.enqueue_trial(space.low_cost_params(prices))
    try:
        _search(study, space, evaluator, ledger, s.max_trials, listener)
        results = _results(study, s, task, tuning, test, metric, needs_check, metered, loop, prices, ledger,
                           study_name)
    except Interrupted:
        raise Interrupted(f"spent {ledger.spent:.6g} of {s.optimization_budget:.6g}") from None
    finally:
        loop.run(metered.generator.aclose())
        loop.close()
    if s.output_dir is not None:
        write_atomic(Path(s.output_dir) / "results.json", json.dumps(results.to_dict(), indent=2))
    return results


def _backend(s: InferConfig, generator: Generator | None, loop: BackgroundLoop) -> tuple[Generator, list[str]]:
    if generator is not None:
        if not s.models:
            raise InputError("models", "name the model(s) the generator serves")
        return generator, list(s.models)
    if (s.endpoint is None) == (s.local_model is None):
        raise InputError("endpoint", "give exactly one of --endpoint URL or --local-model PATH")
    if s.endpoint is not None:
        from lmtune.llm.openai_compat import OpenAIGenerator

        if not s.models:
            raise InputError("models", "name the endpoint's model(s) to search, e.g. --models gpt-4o-mini,gpt-4o")
        generator = OpenAIGenerator(s.endpoint, api_key_env=s.api_key_env, concurrency=s.concurrency)
        loop.run(generator.check())
        return generator, list(s.models)
    from lmtune.llm import check_device
    from lmtune.llm.local import LocalGenerator

    generator = LocalGenerator(s.local_model, device=check_device(s.device))
    if s.models and s.models != [generator.name]:
        raise InputError("models", f"a local model is one model, {generator.name!r}; leave --models out")
    return generator, [generator.name]


def _knowledge_from(trials) -> PruningKnowledge:
    knowledge = PruningKnowledge()
    for t in trials:
        if attrs.VALID in t.user_attrs and attrs.TOKEN_KEY in t.user_attrs and not t.user_attrs.get(attrs.INFERRED):
            knowledge.record(t.user_attrs[attrs.TOKEN_KEY], t.params["n"], t.params["max_tokens"],
                             t.user_attrs[attrs.VALID])
    return knowledge


def _search(study, space: InferenceSpace, evaluator: Evaluator, ledger: SpendLedger, max_trials: int,
            listener: TrialListener | None) -> None:
    state = {"exhausted": False, "failures": 0}

    def objective(trial: optuna.Trial) -> float:
        config = space.suggest(trial)
        spent0, cached0 = ledger.spent, ledger.cached

        def store_spend():
            trial.set_user_attr(attrs.SPEND, ledger.spent - spent0)
            trial.set_user_attr(attrs.CACHED_SPEND, ledger.cached - cached0)

        trial.set_user_attr(attrs.TOKEN_KEY, config.token_key)
        try:
            result = evaluator.evaluate(config, on_progress=store_spend)
        except BudgetExhausted as exc:
            state["exhausted"] = True
            trial.set_user_attr(attrs.FAIL_REASON, f"optimization budget exhausted: {exc}")
            raise
        except GenerationError as exc:
            state["failures"] += 1
            trial.set_user_attr(attrs.FAIL_REASON, f"generation failed: {exc}"[:500])
            raise
        finally:
            store_spend()
        state["failures"] = 0
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

    def stop() -> bool:
        return state["exhausted"] or state["failures"] >= MAX_CONSECUTIVE_FAILURES or ledger.left <= 0

    run_trials(study, objective, max_trials, listener=listener, catch=(BudgetExhausted, GenerationError),
               stop_when=stop)


def describe_trial(study: optuna.Study, trial: FrozenTrial) -> str:
    """How a finished inference trial reads in the progress line."""
    if trial.state == TrialState.COMPLETE:
        outcome = f"{trial.value:.4f} at {trial.user_attrs[attrs.COST_PER_INSTANCE]:.4g}/instance"
    else:
        why = trial.user_attrs.get(attrs.INFEASIBLE) or trial.user_attrs.get(attrs.FAIL_REASON)
        outcome = f"{trial.state.name} ({why})"
    spent = sum(t.user_attrs.get(attrs.SPEND, 0.0) for t in study.get_trials(deepcopy=False))
    budget = study.user_attrs.get(attrs.OPTIMIZATION_BUDGET)
    return f"{outcome}; spent {spent:.4g} of {budget:.4g} {trial.params}"


def config_of(trial) -> InferenceConfig:
    p = trial.params
    return InferenceConfig(model=p["model"], template=p["template"], stop=p["stop"], max_tokens=p["max_tokens"],
                           n=p["n"], temperature=p.get("temperature"), top_p=p.get("top_p"), top_k=p.get("top_k"),
                           repetition_penalty=p.get("repetition_penalty"))


def pareto_front(points: list[tuple[float, float, Any]]) -> list[tuple[float, float, Any]]:
    """(cost, quality, item) that no other point beats on both: lower or equal cost and higher or equal quality."""
    front = []
    for cost, quality, item in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or quality > front[-1][1]:
            front.append((cost, quality, item))
    return front


def _results(study, s: InferConfig, task: Task, tuning, test, metric, needs_check, metered: MeteredGenerator, loop,
             prices: PriceTable, ledger: SpendLedger, study_name: str) -> InferResult:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE
                and t.user_attrs.get(attrs.COST_PER_INSTANCE, float("inf")) <= s.inference_budget]
    by_state = {state.name: sum(1 for t in trials if t.state == state) for state in TrialState}
    results = InferResult(
        study_name=study_name, task=s.task, metric=s.metric,
        models=sorted({t.params.get("model") for t in trials if t.params}),
        inference_budget=s.inference_budget, optimization_budget=s.optimization_budget,
        spend={"real": ledger.spent, "cached": ledger.cached, "calls": ledger.calls,
               "cached_calls": ledger.cached_calls},
        trials={k: v for k, v in by_state.items() if v},
        configs_scored=len(complete),
        configs_pruned_by_knowledge=sum(1 for t in trials if t.user_attrs.get(attrs.INFERRED)),
        configs_over_budget_measured=sum(1 for t in trials if t.state == TrialState.PRUNED
                                         and not t.user_attrs.get(attrs.INFERRED)),
        tuning_instances=len(tuning), test_instances=len(test),
    )
    if not complete:
        return results
    best = max(complete, key=lambda t: (t.value, -t.user_attrs[attrs.COST_PER_INSTANCE], -t.number))
    front = pareto_front([(t.user_attrs[attrs.COST_PER_INSTANCE], t.value, t) for t in complete])
    test_ledger = SpendLedger(None)
    test_metered = MeteredGenerator(metered.generator, prices, test_ledger)
    tester = Evaluator(task, test, metric, needs_check, test_metered, loop,
                       float("inf"), pruning=False, seed=s.seed, salt="test")
    tested: dict[int, dict] = {}

    def on_test(trial) -> dict:
        if trial.number not in tested:
            result = tester.evaluate(config_of(trial))
            tested[trial.number] = {"quality": result.quality, "cost_per_instance": result.cost_per_instance,
                                    "within_inference_budget": result.cost_per_instance <= s.inference_budget}
        return tested[trial.number]

    def describe(trial) -> dict:
        return {"trial": trial.number, "config": _readable(config_of(trial), task),
                "tuning": {"quality": trial.value, "cost_per_instance": trial.user_attrs[attrs.COST_PER_INSTANCE]}}

    results.best = {**describe(best), "test": on_test(best)}
    results.pareto_front = [{**describe(t), **({"test": on_test(t)} if s.test_pareto else {})} for _, _, t in front]
    results.spend["test_real"] = test_ledger.spent
    results.spend["test_cached"] = test_ledger.cached
    return results


def _readable(config: InferenceConfig, task: Task) -> dict:
    d = config.as_dict()
    d["template"] = task.templates[config.template]
    stop = task.stops[config.stop]
    d["stop"] = list(stop) if stop else None
    return {k: v for k, v in d.items() if v is not None or k == "stop"}


