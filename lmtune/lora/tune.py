"""``tune_lora``: search LoRA configs on a proxy subset, retrain the best on all data, test it."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.samplers import BaseSampler

from lmtune import attrs
from lmtune.config import build_config
from lmtune.errors import InputError, NoResult
from lmtune.files import write_atomic
from lmtune.finetune.data import DatasetSplits, load_dataset
from lmtune.finetune.device import prepare_hardware
from lmtune.finetune.hparams import PARAM_NAMES, VARIANTS, LoraHyperparams
from lmtune.finetune.objective import LoraObjective
from lmtune.finetune.peft_model import check_model
from lmtune.finetune.proxy import ProxyPlan, full_run_steps, plan_proxy
from lmtune.finetune.scores import constant_score, last_metrics
from lmtune.finetune.train import TrainSettings, metric_direction, metric_name, train_and_evaluate
from lmtune.llm import hub_id, resolve_model
from lmtune.lora.config import LOCAL_FIELDS, PATH_FIELDS, LoraRunConfig
from lmtune.lora.recipe import (
    build_recipe,
    finish_adapter,
    model_card,
    rerun_config,
    write_rerun_yaml,
)
from lmtune.lora.report import best_trial, study_learned, trial_rows, write_results
from lmtune.results import Result
from lmtune.runtime.compute import ComputeBudget, spent
from lmtune.runtime.loop import TrialListener, run_trials
from lmtune.runtime.storage import make_storage, mask_url, normalize_url
from lmtune.runtime.study import open_study, publish_job
from lmtune.runtime.trials import counted_trials
from lmtune.runtime.worker import WorkerParts
from lmtune.samplers.language_bo.transfer import TransferSource, check_compatible, describe_task, load_source
from lmtune.samplers.registry import LANGUAGE_BO_PLUS, make_pruner, make_sampler
from lmtune.space import Categorical, SearchSpace, load_space

log = logging.getLogger(__name__)
#: The study attribute holding ``DatasetSplits.fingerprint()``.
DATA_FINGERPRINT = "data_fingerprint"
#: What trials are ranked by unless ``--proxy-metric`` says otherwise (docs/decisions.md: why).
DEFAULT_PROXY_METRIC = "eval_loss"
#: Evaluations along a trial without and with a pruner.
PLAIN_EVALS, PRUNED_EVALS = 2, 4


@dataclass
class LoraResult(Result):
    """What ``lmtune lora`` found; ``to_dict()`` is ``results.json``.

    ``best`` is None when the run only created the study (``run=False``); ``final`` is None without the final
    retrain (``final_train=False``).
    """

    study_name: str
    storage: str
    budget: int
    finished: int
    sampler: str | None = None
    space: str | None = None
    model: str | None = None
    dataset: str | None = None
    task: str | None = None
    metric_name: str | None = None
    direction: str | None = None
    proxy_fraction: float | None = None
    proxy_examples: int | None = None
    best: dict[str, Any] | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] | None = None
    wall_seconds: float | None = None
    #: The proxy (``ProxyPlan.to_dict``: steps, rows, metric, cost share of a full run by batch size).
    proxy: dict[str, Any] | None = None
    pruner: str | None = None
    budget_steps: int | None = None
    budget_seconds: float | None = None
    #: What the trials took (``Spent``), and ``full_runs``: their training examples over a full run's.
    spent: dict[str, Any] | None = None
    #: What one constant answer scores on validation (``{"value", "what", "label"}``); trials at it learned nothing.
    constant_score: dict[str, Any] | None = None
    #: Everything to train the best config again (``lmtune.lora.recipe.build_recipe``); ``best.yaml`` is its
    #: ``lmtune`` part.
    recipe: dict[str, Any] | None = None
    #: What the study learned: plain sentences from the Trajectory Context Summarizer (``summary.md`` lists them).
    learned: list[str] = field(default_factory=list)


def resolve_space(cfg: LoraRunConfig) -> SearchSpace:
    """The configured space with the variant fixed or searched, checked against LoRA's parameters."""
    space = load_space(cfg.space)
    if cfg.variant == "search":
        space = space.with_param(Categorical("variant", VARIANTS))
    elif cfg.variant is not None:
        if cfg.variant not in VARIANTS:
            raise InputError("variant", f"{cfg.variant!r} is not allowed; allowed: {', '.join(VARIANTS)}, search")
        space = space.with_fixed(variant=cfg.variant)
    unknown = sorted(set(space.names) - set(PARAM_NAMES))
    if unknown:
        raise InputError(unknown[0], f"is not a LoRA hyperparameter; allowed: {', '.join(PARAM_NAMES)}")
    if {"alpha", "alpha_ratio"} <= set(space.names):
        raise InputError("alpha_ratio", "a space may set alpha or alpha_ratio, not both")
    LoraHyperparams.from_params(space.fixed)
    for param in space.params:  # every value a sampler may propose must make a valid config
        edges = param.values() if isinstance(param, Categorical) else (param.low, param.high)
        for value in edges:
            LoraHyperparams.from_params({param.name: value})
    return space


def prepare_run(cfg: LoraRunConfig) -> tuple[SearchSpace, DatasetSplits, str, TrainSettings]:
    """Check and load what every LoRA command needs: space, data splits, model path, training settings.

    Raises ``InputError`` for bad input before anything is trained or stored.
    """
    space = resolve_space(cfg)
    searched = {p.name: p for p in space.params}
    variants = searched["variant"].values() if "variant" in searched else [space.fixed.get("variant", "lora")]
    prepare_hardware(cfg.device, cfg.precision, cfg.quantize, variants)
    splits = load_dataset(cfg.dataset, task=cfg.task, seed=cfg.seed)
    model = resolve_model(cfg.model)
    check_model(model, splits.task, cfg.target_modules)
    return space, splits, model, TrainSettings(
        max_length=cfg.max_length, epochs=cfg.epochs, seed=cfg.seed, device=cfg.device, precision=cfg.precision,
        quantize=cfg.quantize, gradient_checkpointing=cfg.gradient_checkpointing, group_by_length=cfg.group_by_length)


def proxy_plan(cfg: LoraRunConfig, space: SearchSpace, splits: DatasetSplits, settings: TrainSettings) -> ProxyPlan:
    """How long each trial trains, on which rows, ranked by which metric (``lmtune.finetune.proxy``)."""
    task_metric = metric_name(splits.task, settings)
    metric = cfg.proxy_metric or DEFAULT_PROXY_METRIC
    if metric not in ("eval_loss", task_metric):
        raise InputError("proxy_metric", f"{metric!r} is not a metric of a {splits.task} task; allowed: "
                         f"eval_loss, {task_metric}")
    if cfg.proxy_steps and cfg.proxy_share is not None:
        log.warning("--proxy-steps %d wins over --proxy-share %g: every trial takes %d steps",
                    cfg.proxy_steps, cfg.proxy_share, cfg.proxy_steps)
    return plan_proxy(len(splits.train), space, epochs=cfg.epochs, steps=cfg.proxy_steps, share=cfg.proxy_share,
                      fraction=cfg.proxy_fraction, metric=metric, min_steps=settings.min_steps)


def search_parts(cfg: LoraRunConfig, space: SearchSpace, splits: DatasetSplits, model: str, settings: TrainSettings,
                 progress=None) -> tuple[ProxyPlan, LoraObjective, optuna.pruners.BasePruner]:
    """The proxy, the objective that trains it and the pruner whose rungs are its evaluation steps."""
    plan = proxy_plan(cfg, space, splits, settings)
    # An evaluation of the validation split can cost more than the steps between two: a step-sized trial
    # evaluates at the middle and at the end, or at four even points where a pruner decides (its first rung is
    # the first). An epoch-sized one keeps lmtune's earlier four.
    evals = settings.eval_points if plan.epoch_sized else PRUNED_EVALS if cfg.pruner != "none" else PLAIN_EVALS
    trial_settings = dataclasses.replace(settings, eval_points=evals,
                                         exact_match=settings.exact_match and plan.metric != "eval_loss")
    objective = LoraObjective(space, splits, model=model, proxy_fraction=plan.fraction, settings=trial_settings,
                              seed=cfg.seed, target_modules=cfg.target_modules, progress=progress,
                              metric=plan.metric, plan=plan)
    first, last = plan.rungs(evals)
    pruner = make_pruner(cfg.pruner, min_resource=first, max_resource=last)
    return plan, objective, pruner


def study_attrs(cfg: LoraRunConfig, space: SearchSpace, splits: DatasetSplits, plan: ProxyPlan) -> dict[str, Any]:
    """What a LoRA study searches; resuming or joining it with anything else is refused. The data is compared by
    what was loaded (``DatasetSplits.fingerprint``), not by its path as typed. The proxy and the pruner are
    compared too, so a resumed multi-fidelity study keeps its rungs."""
    return {"space": space.to_dict(), "model": str(cfg.model or "minilm"), DATA_FINGERPRINT: splits.fingerprint(),
            "proxy_fraction": plan.fraction, "max_length": cfg.max_length, "seed": cfg.seed,
            "proxy": {"steps": plan.steps, "share": plan.share, "epochs": plan.epochs, "metric": plan.metric},
            "pruner": cfg.pruner}


def check_same_data(storage, study_name: str, splits: DatasetSplits) -> None:
    """Refuse to resume a study on other data, naming both datasets (the path alone says too little)."""
    stored = next((s.user_attrs for s in storage.get_all_studies() if s.study_name == study_name), None)
    if stored is None or DATA_FINGERPRINT not in stored:
        return
    before, now = stored[DATA_FINGERPRINT], splits.fingerprint()

    def described(fingerprint: dict) -> str:
        rows = "/".join(map(str, fingerprint["rows"]))
        return f"{rows} train/validation/test rows, sha256 {fingerprint['sha256'][:12]}"

    if before != now:
        raise InputError("dataset", f"study {study_name!r} was created with {stored.get('dataset')!r} "
                         f"({described(before)}); {splits.name!r} loads other data ({described(now)}); "
                         "use the same data or another --study-name")


def warn_if_tiny(plan: ProxyPlan, settings: TrainSettings) -> None:
    """Say when an epoch-sized proxy is too small for the largest batch to take ``min_steps`` optimizer steps,
    and what else about the proxy deserves a look (a trial longer than a full run, passes over its rows)."""
    batch = max(plan.batch_sizes)
    steps = full_run_steps(plan.rows, batch, settings.epochs)
    if plan.epoch_sized and steps < settings.min_steps:
        log.warning("the proxy subset holds %d rows: at batch %s a trial would take %d optimizer step(s), so each "
                    "takes %d (passing over its rows again); more data or a larger --proxy-fraction measures "
                    "configs better", plan.rows, batch, steps, settings.min_steps)
    for note in plan.notes:
        log.warning("proxy: %s", note)


def job_config(cfg: LoraRunConfig) -> dict[str, Any]:
    """The fields a worker needs to rebuild this run's objective and sampler (local paths made absolute)."""
    job = cfg.model_dump(mode="json", exclude=LOCAL_FIELDS)
    for name in PATH_FIELDS:
        if isinstance(job.get(name), str) and Path(job[name]).exists():
            job[name] = str(Path(job[name]).resolve())
    job["transfer_from"] = [str(Path(s).resolve()) if Path(s).is_file() else s for s in job["transfer_from"]]
    return job


def transfer_sources(cfg: LoraRunConfig, space: SearchSpace) -> list[TransferSource]:
    """The tables and studies of ``--transfer-from``, read and checked against the space before anything is stored
    (a study is looked up in ``--storage``, which must exist then)."""
    sources, storage = [], None
    for spec in cfg.transfer_from:
        if not Path(spec).expanduser().is_file() and storage is None:
            try:
                storage = make_storage(cfg.storage, existing=True)
            except InputError as exc:
                raise InputError("transfer_from", f"{spec!r} is not a file, and no study can be read from the "
                                 f"storage: {exc.message}") from None
        source = load_source(spec, storage)
        check_compatible(source, space)
        log.info("Transferring %d results of %s: %s", len(source.values), source.name, source.description)
        sources.append(source)
    return sources


def lora_sampler(cfg: LoraRunConfig, space: SearchSpace, sources: list[TransferSource],
                 description: str) -> BaseSampler:
    """The configured sampler; ``language-bo+`` also gets this study's description and its transfer sources."""
    options = dict(cfg.sampler_options)
    if cfg.sampler in LANGUAGE_BO_PLUS:
        options["description"] = description
    if sources:
        options["transfer"] = sources
    return make_sampler(cfg.sampler, space=space, **options)


def study_description(cfg: LoraRunConfig, space: SearchSpace, splits: DatasetSplits, metric: str,
                      direction: str) -> str:
    return describe_task(model=cfg.model, dataset=splits.name, task=splits.task, metric=metric, direction=direction,
                         fixed=space.fixed)


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
        sampler = lora_sampler(cfg, space, transfer_sources(cfg, space), "LoRA fine-tuning.")
        return WorkerParts(space, sampler, make_pruner(cfg.pruner, min_resource=1, max_resource=1), None)
    space, splits, model, settings = prepare_run(cfg)
    plan, lora_objective, pruner = search_parts(cfg, space, splits, model, settings,
                                                listener.step if listener is not None else None)
    stored = {k: v for k, v in study_attrs(cfg, space, splits, plan).items() if k != "model"}
    description = study_description(cfg, space, splits, lora_objective.metric_name, lora_objective.direction)
    return WorkerParts(space, lora_sampler(cfg, space, transfer_sources(cfg, space), description), pruner,
                       lora_objective, stored, stop_when=compute_budget(cfg, plan))


def compute_budget(cfg: LoraRunConfig, plan: ProxyPlan) -> ComputeBudget:
    return ComputeBudget(steps=cfg.budget_steps, seconds=cfg.budget_seconds, trial_steps=plan.longest)


def tune_lora(config: LoraRunConfig | None = None, *, sampler: BaseSampler | str | None = None,
              listener: TrialListener | None = None, **fields: Any) -> LoraResult:
    """Run ``lmtune lora``: the study (resuming it if it exists), then the final retrain and test.

    Takes a :class:`LoraRunConfig` or its fields as keyword arguments; ``sampler`` may be any Optuna
    sampler object, which then replaces the one named in the config (a name is the config field);
    ``listener`` sees the trials (the CLI draws its progress from it). Every input is checked before the
    study is opened, so bad input leaves nothing in storage. ``results.json`` is the result's ``to_dict()``.
    """
    if isinstance(sampler, str):  # the config field, given by name as every other field
        sampler, fields = None, {**fields, "sampler": sampler}
    cfg = config or build_config(LoraRunConfig, **fields)
    started = time.perf_counter()
    space, splits, model, settings = prepare_run(cfg)  # bad input fails here and below, before storage is touched
    sampler_name = cfg.sampler if sampler is None else type(sampler).__name__
    sources = transfer_sources(cfg, space)
    plan, objective, pruner = search_parts(cfg, space, splits, model, settings,
                                           listener.step if listener is not None else None)
    description = study_description(cfg, space, splits, objective.metric_name, objective.direction)
    sampler = sampler or lora_sampler(cfg, space, sources, description)  # an agent endpoint answers before storage
    storage = make_storage(cfg.storage, heartbeat_interval=cfg.heartbeat_interval, grace_period=cfg.grace_period)
    warn_if_tiny(plan, settings)
    check_same_data(storage, cfg.study_name, splits)
    study = open_study(cfg.study_name, storage=storage, sampler=sampler, pruner=pruner,
                       direction=objective.direction, attrs=study_attrs(cfg, space, splits, plan),
                       info={"dataset": splits.name, "task": splits.task}, metric_names=[objective.metric_name])
    publish_job(study, "lora", "lmtune.lora.tune:worker_parts", job_config(cfg), cfg.trials)
    constant = constant_score(splits, objective.task_metric)
    if constant is not None and attrs.CONSTANT_SCORE not in study.user_attrs:
        study.set_user_attr(attrs.CONSTANT_SCORE, constant)
    storage_shown = mask_url(normalize_url(cfg.storage))
    result = LoraResult(study_name=cfg.study_name, storage=storage_shown, budget=cfg.trials,
                        finished=len(counted_trials(study)))
    if not cfg.run:
        log.info("Study %s holds %d of %d trials. Start workers with: lmtune worker --storage '%s' --study %s",
                 cfg.study_name, result.finished, cfg.trials, storage_shown, cfg.study_name)
        return result
    if result.finished:
        log.info("Resuming study %s: %d of %d trials already finished.", cfg.study_name, result.finished, cfg.trials)
    log.info("Proxy: %s on %d of %d training rows, ranked by %s; a trial costs %s of a full run's training "
             "examples.", plan.rule, plan.rows, plan.train_rows, plan.metric,
             ", ".join(f"{plan.cost_share(b):.0%} at batch {b}" for b in plan.batch_sizes))
    run_trials(study, objective, cfg.trials, listener=listener, stop_when=compute_budget(cfg, plan))

    best = best_trial(study)
    if best is None:
        reasons = {t.user_attrs.get(attrs.FAIL_REASON, t.state.name) for t in counted_trials(study)}
        raise NoResult("trials", f"no trial of study {cfg.study_name!r} completed: "
                       f"{'; '.join(sorted(map(str, reasons)))[:400]}")
    hp = LoraHyperparams.from_params({**best.params, **space.fixed})
    log.info("Best trial %d: %s %.4f with %s", best.number, objective.metric_name, best.value, hp.to_dict())
    result.finished = len(counted_trials(study))
    result.sampler = sampler_name
    result.space, result.dataset, result.task = space.name, splits.name, splits.task
    result.model = cfg.model or f"MiniLM ({model})"
    result.metric_name, result.direction = objective.metric_name, objective.direction
    result.proxy_fraction = plan.fraction
    result.proxy_examples = plan.rows
    result.proxy, result.pruner = plan.to_dict(), cfg.pruner
    result.budget_steps, result.budget_seconds = cfg.budget_steps, cfg.budget_seconds
    result.best = {"trial": best.number, "params": best.params, "hyperparams": hp.to_dict(),
                   "proxy_metric": best.value, "proxy_metrics": last_metrics(best)}
    result.constant_score = constant
    result.trials = trial_rows(study)
    result.spent = spent(study).to_dict()
    result.spent["full_runs"] = round(sum(r["steps"] * r["batch_size"] for r in result.trials if r["steps"])
                                      / (len(splits.train) * cfg.epochs), 2)
    nothing = next((row["learned_nothing"] for row in result.trials if row["number"] == best.number), None)
    if nothing:
        result.best["learned_nothing"] = nothing
        log.warning("the best trial %s: try other learning rates or a longer proxy (--proxy-share)", nothing)
    target_modules = cfg.target_modules
    result.learned = study_learned(study, space, objective.metric_name)
    if cfg.final_train:
        final = result.final = _final_train(hp, splits, model, settings, cfg, listener, objective.reuse)
        target_modules = finish_adapter(Path(final["adapter_dir"]), base_id=hub_id(cfg.model), model_path=model,
                                        task=splits.task, label_names=splits.label_names)
        proxy_task = result.best["proxy_metrics"].get(final["metric_name"])
        maximize = metric_direction(final["metric_name"]) == "maximize"
        worse = proxy_task is not None and (final["test_metric"] < proxy_task if maximize
                                            else final["test_metric"] > proxy_task)
        if worse:
            final["warning"] = (f"the full-data run scored {final['test_metric']:.4f} on test, worse than its proxy "
                                f"trial ({proxy_task:.4f}): the proxy did not predict full training for this config")
            log.warning(final["warning"])
    rerun = rerun_config(job_config(cfg), hp, cfg.study_name)
    result.recipe = build_recipe(rerun=rerun, model=cfg.model, model_path=model, base_id=hub_id(cfg.model),
                                 splits=splits, settings=settings, hp=hp, proxy_fraction=plan.fraction,
                                 proxy_examples=result.proxy_examples,
                                 target_modules=target_modules or _default_targets(model))
    result.wall_seconds = round(time.perf_counter() - started, 1)
    write_rerun_yaml(cfg.out_dir / "best.yaml", rerun,
                     f"lmtune lora --config {cfg.out_dir / 'best.yaml'}\ntrains trial {best.number} of study "
                     f"{cfg.study_name} again ({objective.metric_name} {best.value:.4f} on validation): the same "
                     "model, data, proxy subset and seed, then retrains it on the full training split and tests it.")
    if result.final is not None:
        write_atomic(Path(result.final["adapter_dir"]) / "README.md", model_card(result.to_dict()))
    json_path, md_path = write_results(cfg.out_dir, result.to_dict())
    log.info("Wrote %s, %s and %s", json_path, md_path, cfg.out_dir / "best.yaml")
    return result


def _default_targets(model: str) -> list[str] | None:
    """PEFT's default LoRA target modules for the model's type (what it adapts when none are named)."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    from transformers import AutoConfig

    found = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(AutoConfig.from_pretrained(model).model_type)
    return sorted(found) if found else None


def _final_train(hp: LoraHyperparams, splits: DatasetSplits, model: str, settings: TrainSettings,
                 cfg: LoraRunConfig, listener: TrialListener | None, reuse=None) -> dict[str, Any]:
    """Retrain the chosen config on the whole training split, test it, save the adapter."""
    adapter_dir = cfg.out_dir / "adapter"
    log.info("Retraining the best config on the full training split (%d examples)...", len(splits.train))
    result = train_and_evaluate(hp, splits.train, splits.test, task=splits.task, model=model,
                                settings=dataclasses.replace(settings, eval_points=1), label_names=splits.label_names,
                                target_modules=cfg.target_modules,
                                on_step=listener.step if listener is not None else None,
                                save_adapter_to=adapter_dir, reuse=reuse)
    log.info("Test %s: %.4f (loss %.4f)", result.metric_name, result.metric, result.eval_loss)
    return {"test_metric": result.metric, "test_loss": result.eval_loss, "metric_name": result.metric_name,
            "train_seconds": round(result.train_seconds, 1), "train_examples": result.train_examples,
            "adapter_dir": str(adapter_dir)}
