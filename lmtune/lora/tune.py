"""``tune_lora``: search LoRA configs on a proxy subset, retrain the best on all data, test it.

The search's parts come from ``lmtune.lora.search.build_search``; ``worker_parts`` gives a worker the same.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial

from lmtune import attrs
from lmtune.config import build_config, check_writable_folder
from lmtune.errors import NoResult
from lmtune.finetune.scores import constant_of, last_metrics, learned_nothing
from lmtune.finetune.train import metric_direction, train_and_evaluate
from lmtune.llm import hub_id
from lmtune.lora.config import LoraRunConfig
from lmtune.lora.memory import resolve_memory
from lmtune.lora.recipe import build_recipe, finish_adapter, rerun_config
from lmtune.lora.report import (
    best_trial,
    final_metrics,
    final_run_attr,
    model_chosen,
    startup_of,
    study_learned,
    trial_rows,
    warn_startup,
    write_run,
    write_trl,
)
from lmtune.lora.search import (
    LoraSearch,
    build_search,
    job_config,
    lora_sampler,
    open_search_study,
    resolve_space,
)
from lmtune.report.progress import LogProgress
from lmtune.report.reports import report_study
from lmtune.report.trackers import TrackingListener, check_trackers, finish_trackers, open_trackers
from lmtune.results import Result
from lmtune.runtime.compute import spent
from lmtune.runtime.loop import TrialListener, run_trials
from lmtune.runtime.trials import counted_trials
from lmtune.runtime.worker import WorkerParts
from lmtune.samplers.registry import make_pruner
from lmtune.space import SearchSpace

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class LoraResult(Result):
    """What a ``lmtune lora`` run found (``LoraResult.from_run``); ``to_dict()`` is ``results.json``.

    ``final`` is None without the final retrain (``final_train=False``), ``constant_score`` for a metric no
    constant answer has (validation loss), ``budget_steps``/``budget_seconds`` when the search had no such budget.
    """

    study_name: str
    storage: str
    budget: int
    finished: int
    sampler: str
    space: str
    model: str
    dataset: str
    task: str
    metric_name: str
    direction: str
    proxy_fraction: float
    proxy_examples: int
    best: dict[str, Any]
    trials: list[dict[str, Any]]
    final: dict[str, Any] | None
    wall_seconds: float
    #: The proxy (``ProxyPlan.to_dict``: steps, rows, metric, cost share of a full run by batch size).
    proxy: dict[str, Any]
    pruner: str
    budget_steps: int | None
    budget_seconds: float | None
    #: What the trials took (``Spent``), and ``full_runs``: their training examples over a full run's.
    spent: dict[str, Any]
    #: What one constant answer scores on validation (``{"value", "what", "label"}``); trials at it learned nothing.
    constant_score: dict[str, Any] | None
    #: Everything to train the best config again (``lmtune.lora.recipe.build_recipe``); ``best.yaml`` is its
    #: ``lmtune`` part.
    recipe: dict[str, Any]
    #: What the study learned: plain sentences from the Trajectory Context Summarizer (``summary.md`` lists them).
    learned: list[str]
    #: Random start-up trials before the sampler's model proposes (``startup_trials``; None for ``random``) and the
    #: trials its model chose (``lmtune.lora.report.model_chosen``).
    startup_trials: int | None = None
    model_trials: list[int] = dataclasses.field(default_factory=list)
    #: The report page (``report.html``), or None when it could not be written (a logged warning).
    report: str | None = None
    #: The earlier studies and tables the sampler remembered (``Memory.summary``: asked for, used, and whether the
    #: sampler's memory gate kept them at its last fit, where the sampler reports it).
    memory: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_run(cls, search: LoraSearch, study: optuna.Study, best: FrozenTrial, final: dict[str, Any] | None,
                 recipe: dict[str, Any], wall_seconds: float) -> LoraResult:
        """The result of ``search`` once its study has run and ``best`` has been retrained (``final``)."""
        cfg, plan, objective, splits = search.cfg, search.plan, search.objective, search.splits
        trials = trial_rows(study)
        examples = sum(row["steps"] * row["batch_size"] for row in trials if row["steps"])
        best_row = {"trial": best.number, "params": best.params, "hyperparams": search.hyperparams(best).to_dict(),
                    "proxy_metric": best.value, "proxy_metrics": last_metrics(best)}
        nothing = next((row["learned_nothing"] for row in trials if row["number"] == best.number), None)
        if nothing:
            best_row["learned_nothing"] = nothing
        return cls(
            study_name=cfg.study_name, storage=search.storage_shown, budget=cfg.trials,
            finished=len(counted_trials(study)), sampler=search.sampler_name, space=search.space.name,
            model=cfg.model or f"MiniLM ({search.model})", dataset=splits.name, task=splits.task,
            metric_name=objective.metric_name, direction=objective.direction, proxy_fraction=plan.fraction,
            proxy_examples=plan.rows, best=best_row, trials=trials, final=final, wall_seconds=wall_seconds,
            proxy=plan.to_dict(), pruner=cfg.pruner, budget_steps=cfg.budget_steps, budget_seconds=cfg.budget_seconds,
            spent={**spent(study).to_dict(), "full_runs": round(examples / (len(splits.train) * cfg.epochs), 2)},
            constant_score=search.constant_score, recipe=recipe,
            learned=study_learned(study, search.space, objective.metric_name),
            startup_trials=startup_of(cfg.sampler, cfg.startup_trials),
            model_trials=model_chosen(study, startup_of(cfg.sampler, cfg.startup_trials)),
            memory=search.memory.summary(_memory_report(search.sampler)))


@dataclass
class PublishedStudy(Result):
    """What ``tune_lora`` returns with ``run=False``: the study is created and its job published for workers."""

    study_name: str
    storage: str
    budget: int
    finished: int


def worker_parts(job: dict[str, Any], *, space: SearchSpace | None = None, objective: bool = True,
                 listener: TrialListener | None = None) -> WorkerParts:
    """A LoRA study's space, sampler, pruner and (with ``objective``) objective, rebuilt by ``lmtune worker``.

    Space, proxy fraction, length and seed must match what the study stored (``attrs``). Model and data come
    from the job's absolute paths (or hub ids), which name the same files on every machine by the user's
    setup, so their names are not compared: the study stored them as typed on the machine that created it.
    """
    cfg = build_config(LoraRunConfig, **job)
    if not objective:  # the worker brings its own objective for the space the study stored
        space = space or resolve_space(cfg)
        sampler = lora_sampler(cfg, space, resolve_memory(cfg, space), "LoRA fine-tuning.")
        return WorkerParts(space, sampler, make_pruner(cfg.pruner, min_resource=1, max_resource=1), None)
    search = build_search(cfg, listener=listener)
    stored = {k: v for k, v in search.attrs.items() if k != "model"}
    return WorkerParts(search.space, search.sampler, search.pruner, search.objective, stored,
                       stop_when=search.stop_when)


def tune_lora(config: LoraRunConfig | None = None, *, sampler: BaseSampler | str | None = None,
              listener: TrialListener | None = None, **fields: Any) -> LoraResult | PublishedStudy:
    """Run ``lmtune lora``: the study (resuming it if it exists), then the final retrain and test.

    Takes a :class:`LoraRunConfig` or its fields as keyword arguments; ``sampler`` may be any Optuna
    sampler object, which then replaces the one named in the config (a name is the config field);
    ``listener`` sees the trials (the CLI draws its progress from it; without one, each finished trial is a
    line of the ``lmtune`` logger, as the command prints it). Every input is checked before the study is opened,
    so bad input leaves nothing in storage. It writes what ``lmtune lora`` writes: ``results.json`` (the result's
    ``to_dict()``), ``summary.md``, ``best.yaml``, the adapter and ``report.html``; with ``run=False`` only the
    study is created (``PublishedStudy``).
    """
    if isinstance(sampler, str):  # the config field, given by name as every other field
        sampler, fields = None, {**fields, "sampler": sampler}
    cfg = config or build_config(LoraRunConfig, **fields)
    started = time.perf_counter()
    listener = listener or LogProgress()
    check_trackers(cfg.track)
    if cfg.run:  # results go there after the trials: a folder that cannot be written fails now
        check_writable_folder(cfg.out_dir, "output_dir")
    search = build_search(cfg, sampler=sampler, listener=listener)
    study = open_search_study(search)
    finished = len(counted_trials(study))
    if not cfg.run:
        log.info("Study %s holds %d of %d trials. Start workers with: lmtune worker --storage '%s' --study %s",
                 cfg.study_name, finished, cfg.trials, search.storage_shown, cfg.study_name)
        return PublishedStudy(cfg.study_name, search.storage_shown, cfg.trials, finished)
    if finished:
        log.info("Resuming study %s: %d of %d trials already finished.", cfg.study_name, finished, cfg.trials)
    plan = search.plan
    log.info("Proxy: %s on %d of %d training rows, ranked by %s; a trial costs %s of a full run's training "
             "examples.", plan.rule, plan.rows, plan.train_rows, plan.metric,
             ", ".join(f"{plan.cost_share(b):.0%} at batch {b}" for b in plan.batch_sizes))
    warn_startup(cfg.sampler, cfg.startup_trials, cfg.trials)
    trackers = open_trackers(cfg.track, cfg.study_name, cfg.out_dir)
    run_trials(study, search.objective, cfg.trials, stop_when=search.stop_when,
               listener=TrackingListener(listener, trackers, plan.metric) if trackers else listener)
    result = _finish(search, study, listener, started)
    finish_trackers(trackers, result.best["hyperparams"], final_metrics(result.to_dict()),
                    [*([Path(result.final["adapter_dir"])] if result.final else []), cfg.out_dir / "results.json"])
    return result


def _finish(search: LoraSearch, study: optuna.Study, listener: TrialListener, started: float) -> LoraResult:
    """After the search: the best config retrained and tested, its recipe, and every file ``lmtune lora`` writes
    (the report page first, so that ``results.json`` says where it is)."""
    cfg, plan = search.cfg, search.plan
    best = _best(study, search)
    final, target_modules = None, cfg.target_modules
    if cfg.final_train:
        final, target_modules = _final_run(search, best, listener)
        study.set_user_attr(attrs.FINAL_RUN, final_run_attr(final, best.number))
    hp = search.hyperparams(best)
    recipe = build_recipe(rerun=rerun_config(job_config(cfg), hp, cfg.study_name), model=cfg.model,
                          model_path=search.model, base_id=hub_id(cfg.model), splits=search.splits,
                          settings=search.settings, hp=hp, proxy_fraction=plan.fraction, proxy_examples=plan.rows,
                          target_modules=target_modules or _default_targets(search.model))
    result = LoraResult.from_run(search, study, best, final, recipe, round(time.perf_counter() - started, 1))
    page = report_study(cfg.storage, cfg.study_name, cfg.out_dir / "report.html")  # a warning if it cannot be made
    result.report = None if page is None else str(page)
    written = write_run(cfg.out_dir, result.to_dict()) + write_trl(cfg.out_dir, result.to_dict(), search.splits.train)
    log.info("Wrote %s", ", ".join(map(str, written)))
    return result


def _best(study: optuna.Study, search: LoraSearch) -> FrozenTrial:
    """The best complete trial, said in the log with a warning when it learned nothing; ``NoResult`` if none."""
    best = best_trial(study)
    if best is None:
        reasons = {t.user_attrs.get(attrs.FAIL_REASON, t.state.name) for t in counted_trials(study)}
        raise NoResult("trials", f"no trial of study {search.cfg.study_name!r} completed: "
                       f"{'; '.join(sorted(map(str, reasons)))[:400]}")
    log.info("Best trial %d: %s %.4f with %s", best.number, search.objective.metric_name, best.value,
             search.hyperparams(best).to_dict())
    constant, maximize = constant_of(study)
    nothing = learned_nothing(constant, best, maximize)
    if nothing:
        log.warning("the best trial %s: try other learning rates or a longer proxy (a larger share in `proxy`)",
                    nothing)
    return best


def _memory_report(sampler: BaseSampler) -> dict[str, Any] | None:
    """What a sampler says of its memory (``memory_report``: whether its gate keeps it), where it says anything."""
    report = getattr(sampler, "memory_report", None)
    return report() if callable(report) else None


def _default_targets(model: str) -> list[str] | None:
    """PEFT's default LoRA target modules for the model's type (what it adapts when none are named)."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    from transformers import AutoConfig

    found = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(AutoConfig.from_pretrained(model).model_type)
    return sorted(found) if found else None


def _final_run(search: LoraSearch, best: FrozenTrial,
               listener: TrialListener | None) -> tuple[dict[str, Any], list[str]]:
    """Retrain the best config on the whole training split, test it, save the adapter so that it stands alone;
    returns what the run gave and the adapter's target modules. A test score worse than the proxy trial's says
    the proxy did not predict the full run."""
    cfg, splits = search.cfg, search.splits
    adapter_dir = cfg.out_dir / "adapter"
    log.info("Retraining the best config on the full training split (%d examples)...", len(splits.train))
    result = train_and_evaluate(search.hyperparams(best), splits.train, splits.test, task=splits.task,
                                model=search.model, settings=dataclasses.replace(search.settings, eval_points=1),
                                label_names=splits.label_names, target_modules=cfg.target_modules,
                                on_step=listener.step if listener is not None else None,
                                save_adapter_to=adapter_dir, reuse=search.objective.reuse)
    log.info("Test %s: %.4f (loss %.4f)", result.metric_name, result.metric, result.eval_loss)
    final = {"test_metric": result.metric, "test_loss": result.eval_loss, "metric_name": result.metric_name,
             "train_seconds": round(result.train_seconds, 1), "train_examples": result.train_examples,
             "adapter_dir": str(adapter_dir)}
    target_modules = finish_adapter(adapter_dir, base_id=hub_id(cfg.model), model_path=search.model,
                                    task=splits.task, label_names=splits.label_names)
    proxy_task = last_metrics(best).get(result.metric_name)
    maximize = metric_direction(result.metric_name) == "maximize"
    if proxy_task is not None and (result.metric < proxy_task if maximize else result.metric > proxy_task):
        final["warning"] = (f"the full-data run scored {result.metric:.4f} on test, worse than its proxy "
                            f"trial ({proxy_task:.4f}): the proxy did not predict full training for this config")
        log.warning(final["warning"])
    return final, target_modules
