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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from lmtune.errors import InputError
from lmtune.inference.evaluate import Evaluator
from lmtune.inference.metrics import make_metric
from lmtune.inference.prices import PriceTable
from lmtune.inference.pruning import PruningKnowledge
from lmtune.inference.space import InferenceConfig, InferenceSpace
from lmtune.inference.spend import BudgetExhausted, MeteredGenerator, SpendLedger
from lmtune.inference.tasks import Task, load_task
from lmtune.llm.cache import CachedGenerator, ResponseCache
from lmtune.llm.generation import BackgroundLoop, GenerationError, Generator

#: Consecutive failed trials (endpoint errors) after which the search stops instead of burning trials.
MAX_CONSECUTIVE_FAILURES = 5


@dataclass
class InferSettings:
    """Everything ``lmtune infer`` takes; the CLI fills it from flags."""

    task: str = "arith-add3"
    endpoint: str | None = None
    local_model: str | None = None
    models: list[str] = field(default_factory=list)
    inference_budget: float = 0.02
    optimization_budget: float = 10.0
    metric: str = "success"
    templates: list[str] = field(default_factory=list)
    stops: list[list[str]] = field(default_factory=list)
    sampling: str = "temperature"
    temperature: tuple[float, float] = (0.0, 2.0)
    top_p: tuple[float, float] = (0.0, 1.0)
    max_tokens: tuple[int, int] | None = None
    n: tuple[int, int] = (1, 16)
    prices: str | None = None
    task_size: int = 300
    test_fraction: float = 0.4
    max_trials: int = 200
    pruning: bool = True
    seed: int = 0
    storage: str | Any | None = None
    study_name: str | None = None
    output_dir: Path | None = None
    cache: str | None = None  # response cache file; "none" disables
    concurrency: int = 8
    api_key_env: str = "OPENAI_API_KEY"
    test_pareto: bool = True


def tune_inference(settings: InferSettings, *, generator: Generator | None = None, console=None) -> dict:
    """Run (or resume) the search and return the results (also written to ``output_dir/results.json``)."""
    s = settings
    if s.inference_budget <= 0 or s.optimization_budget <= 0:
        raise InputError("inference_budget" if s.inference_budget <= 0 else "optimization_budget", "must be > 0")
    if not 0 < s.test_fraction < 1:
        raise InputError("test_fraction", f"must be between 0 and 1, got {s.test_fraction}")
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
                           max_tokens=tuple(s.max_tokens or task.max_tokens), n=tuple(s.n))
    tuning, test = task.split(s.test_fraction, s.seed)
    study_name = s.study_name or f"infer-{Path(task.name).stem}"
    attrs = {"lmtune_infer": {"task": s.task, "models": models, "space": space.describe(), "metric": s.metric,
                              "inference_budget": s.inference_budget, "templates": task.templates,
                              "stops": [list(x) if x else None for x in task.stops], "seed": s.seed,
                              "task_size": s.task_size, "test_fraction": s.test_fraction, "pruning": s.pruning}}
    from lmtune.study import open_study, sigterm_as_interrupt

    study = open_study(study_name, storage=s.storage, sampler=optuna.samplers.TPESampler(seed=s.seed),
                       direction="maximize", attrs=attrs)
    study.set_user_attr("optimization_budget", s.optimization_budget)
    trials = study.get_trials(deepcopy=False)
    ledger = SpendLedger(s.optimization_budget, spent=sum(t.user_attrs.get("spend", 0.0) for t in trials),
                         cached=sum(t.user_attrs.get("cached_spend", 0.0) for t in trials))
    cache = None if s.cache == "none" else ResponseCache(s.cache or Path(s.output_dir or ".") / "responses.sqlite")
    metered = MeteredGenerator(CachedGenerator(generator, cache), prices, ledger)
    knowledge = _knowledge_from(trials)
    evaluator = Evaluator(task, tuning, metric, needs_check, metered, loop,
                          s.inference_budget, pruning=s.pruning, knowledge=knowledge, seed=s.seed)
    if not trials:
        study.enqueue_trial(space.low_cost_params(prices))
    progress = _Progress(console, s.optimization_budget, ledger)
    try:
        with sigterm_as_interrupt(), progress:
            _search(study, space, evaluator, ledger, s.max_trials, progress)
        results = _results(study, s, task, tuning, test, metric, needs_check, metered, loop, prices, ledger,
                           study_name)
    except KeyboardInterrupt:
        from lmtune.study import Interrupted

        raise Interrupted(f"spent {ledger.spent:.6g} of {s.optimization_budget:.6g}") from None
    finally:
        loop.run(metered.generator.aclose())
        loop.close()
    if s.output_dir is not None:
        out = Path(s.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "results.json.tmp"
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(out / "results.json")
    return results


def _backend(s: InferSettings, generator: Generator | None, loop: BackgroundLoop) -> tuple[Generator, list[str]]:
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
    from lmtune.llm.local import LocalGenerator

    generator = LocalGenerator(s.local_model)
    if s.models and s.models != [generator.name]:
        raise InputError("models", f"a local model is one model, {generator.name!r}; leave --models out")
    return generator, [generator.name]


def _knowledge_from(trials) -> PruningKnowledge:
    knowledge = PruningKnowledge()
    for t in trials:
        if "valid" in t.user_attrs and "token_key" in t.user_attrs and not t.user_attrs.get("inferred"):
            knowledge.record(t.user_attrs["token_key"], t.params["n"], t.params["max_tokens"], t.user_attrs["valid"])
    return knowledge


def _search(study, space: InferenceSpace, evaluator: Evaluator, ledger: SpendLedger, max_trials: int,
            progress) -> None:
    state = {"exhausted": False, "failures": 0}

    def objective(trial: optuna.Trial) -> float:
        config = space.suggest(trial)
        spent0, cached0 = ledger.spent, ledger.cached

        def store_spend():
            trial.set_user_attr("spend", ledger.spent - spent0)
            trial.set_user_attr("cached_spend", ledger.cached - cached0)

        evaluator.on_progress = store_spend
        trial.set_user_attr("token_key", config.token_key)
        try:
            result = evaluator.evaluate(config)
        except BudgetExhausted as exc:
            state["exhausted"] = True
            trial.set_user_attr("fail_reason", f"optimization budget exhausted: {exc}")
            raise
        except GenerationError as exc:
            state["failures"] += 1
            trial.set_user_attr("fail_reason", f"generation failed: {exc}"[:500])
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted before the trial finished")
            raise
        finally:
            store_spend()
        state["failures"] = 0
        trial.set_user_attr("instances", result.instances)
        if result.cost_per_instance is not None:
            trial.set_user_attr("cost_per_instance", result.cost_per_instance)
        if not result.inferred:
            trial.set_user_attr("valid", result.feasible)
        else:
            trial.set_user_attr("inferred", True)
        if not result.feasible:
            trial.set_user_attr("infeasible", result.reason)
            raise optuna.TrialPruned(result.reason)
        return result.quality

    def stop(study, frozen):
        progress.trial_done(frozen)
        if state["exhausted"] or state["failures"] >= MAX_CONSECUTIVE_FAILURES:
            study.stop()

    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)))
    if done < max_trials and ledger.left > 0:
        study.optimize(objective, n_trials=max_trials - done, catch=(BudgetExhausted, GenerationError),
                       callbacks=[stop])


def config_of(trial) -> InferenceConfig:
    p = trial.params
    return InferenceConfig(model=p["model"], template=p["template"], stop=p["stop"], max_tokens=p["max_tokens"],
                           n=p["n"], temperature=p.get("temperature"), top_p=p.get("top_p"))


def pareto_front(points: list[tuple[float, float, Any]]) -> list[tuple[float, float, Any]]:
    """(cost, quality, item) that no other point beats on both: lower or equal cost and higher or equal quality."""
    front = []
    for cost, quality, item in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or quality > front[-1][1]:
            front.append((cost, quality, item))
    return front


def _results(study, s: InferSettings, task: Task, tuning, test, metric, needs_check, metered: MeteredGenerator, loop,
             prices: PriceTable, ledger: SpendLedger, study_name: str) -> dict:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE
                and t.user_attrs.get("cost_per_instance", float("inf")) <= s.inference_budget]
    by_state = {state.name: sum(1 for t in trials if t.state == state) for state in TrialState}
    results: dict[str, Any] = {
        "study_name": study_name, "task": s.task, "metric": s.metric, "models": sorted({t.params.get("model") for t in
                                                                                        trials if t.params}),
        "inference_budget": s.inference_budget, "optimization_budget": s.optimization_budget,
        "spend": {"real": ledger.spent, "cached": ledger.cached, "calls": ledger.calls,
                  "cached_calls": ledger.cached_calls},
        "trials": {k: v for k, v in by_state.items() if v},
        "configs_scored": len(complete),
        "configs_pruned_by_knowledge": sum(1 for t in trials if t.user_attrs.get("inferred")),
        "configs_over_budget_measured": sum(1 for t in trials if t.state == TrialState.PRUNED
                                            and not t.user_attrs.get("inferred")),
        "tuning_instances": len(tuning), "test_instances": len(test),
        "best": None, "pareto_front": [],
    }
    if not complete:
        return results
    best = max(complete, key=lambda t: (t.value, -t.user_attrs["cost_per_instance"], -t.number))
    front = pareto_front([(t.user_attrs["cost_per_instance"], t.value, t) for t in complete])
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
                "tuning": {"quality": trial.value, "cost_per_instance": trial.user_attrs["cost_per_instance"]}}

    results["best"] = {**describe(best), "test": on_test(best)}
    results["pareto_front"] = [{**describe(t), **({"test": on_test(t)} if s.test_pareto else {})}
                               for _, _, t in front]
    results["spend"]["test_real"] = test_ledger.spent
    results["spend"]["test_cached"] = test_ledger.cached
    return results


def _readable(config: InferenceConfig, task: Task) -> dict:
    d = config.as_dict()
    d["template"] = task.templates[config.template]
    stop = task.stops[config.stop]
    d["stop"] = list(stop) if stop else None
    return {k: v for k, v in d.items() if v is not None or k == "stop"}


class _Progress:
    """A spend bar and one line per trial (nothing when there is no console)."""

    def __init__(self, console, budget: float, ledger: SpendLedger):
        self.console, self.budget, self.ledger = console, budget, ledger
        self.progress = None

    def __enter__(self):
        if self.console is not None:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("spend"), BarColumn(), TextColumn("{task.completed:.4g} of "
                                     "{task.total:.4g}"), TimeElapsedColumn(), console=self.console, transient=True)
            self.bar = self.progress.add_task("spend", total=self.budget, completed=self.ledger.spent)
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()

    def trial_done(self, trial) -> None:
        if self.console is None:
            return
        self.progress.update(self.bar, completed=self.ledger.spent)
        if trial.state == TrialState.COMPLETE:
            outcome = f"{trial.value:.4f} at {trial.user_attrs['cost_per_instance']:.4g}/instance"
        else:
            why = trial.user_attrs.get("infeasible") or trial.user_attrs.get("fail_reason")
            outcome = f"{trial.state.name} ({why})"
        self.console.print(f"trial {trial.number}: {outcome}; spent {self.ledger.spent:.4g} of {self.budget:.4g} "
                           f"{trial.params}")


def parse_range(text: str, field: str, kind: type) -> tuple:
    """``"LOW,HIGH"`` (or one value for a fixed one) as a tuple of ``kind``."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(kind(p) for p in parts)
    except ValueError:
        raise InputError(field, f"expected LOW,HIGH numbers, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or values[0] > values[1]:
        raise InputError(field, f"expected LOW,HIGH with LOW <= HIGH, got {text!r}")
    return values


def parse_stop(text: str) -> list[str]:
    """One stop choice: strings joined by '|' with escapes (``\\n``); 'none' for no stop."""
    if text.strip().lower() == "none":
        return []
    return [part.encode().decode("unicode_escape") for part in text.split("|") if part]
