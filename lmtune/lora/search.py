"""One LoRA search's parts, built once: ``build_search`` checks the input and makes the space, data, proxy,
objective, pruner and sampler before storage is touched.

``tune_lora`` runs what it builds and ``worker_parts`` hands the same parts to ``lmtune worker``, so a worker
cannot wire a study differently from the run that created it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial

from lmtune import attrs
from lmtune.errors import InputError
from lmtune.finetune.data import DatasetSplits, load_dataset
from lmtune.finetune.device import prepare_hardware
from lmtune.finetune.encode import check_encoding
from lmtune.finetune.hparams import PARAM_NAMES, VARIANTS, LoraHyperparams
from lmtune.finetune.objective import LoraObjective
from lmtune.finetune.peft_model import check_model
from lmtune.finetune.proxy import ProxyPlan, full_run_steps, plan_proxy
from lmtune.finetune.scores import constant_score
from lmtune.finetune.train import TrainSettings, metric_name
from lmtune.llm import resolve_model
from lmtune.lora.config import LOCAL_FIELDS, PATH_FIELDS, LoraRunConfig
from lmtune.lora.memory import Memory, resolve_memory
from lmtune.runtime.compute import ComputeBudget
from lmtune.runtime.loop import TrialListener
from lmtune.runtime.storage import make_storage, mask_url, normalize_url
from lmtune.runtime.study import open_study, publish_job
from lmtune.samplers.language_bo.transfer import describe_task
from lmtune.samplers.registry import PLUS_OPTIONS, make_pruner, make_sampler
from lmtune.space import Categorical, Listed, SearchSpace, load_space

log = logging.getLogger(__name__)
#: The study attribute holding ``DatasetSplits.fingerprint()``.
DATA_FINGERPRINT = "data_fingerprint"
#: What trials are ranked by unless ``proxy_metric`` says otherwise (docs/decisions.md: why).
DEFAULT_PROXY_METRIC = "eval_loss"
#: Evaluations along a trial without and with a pruner.
PLAIN_EVALS, PRUNED_EVALS = 2, 4


def resolve_space(cfg: LoraRunConfig) -> SearchSpace:
    """The configured space with the variant fixed or searched, checked against LoRA's parameters."""
    space = load_space(cfg.space)
    if cfg.variant == "search":
        space = space.with_param(Categorical("variant", VARIANTS))
    elif cfg.variant is not None:
        space = space.with_fixed(variant=cfg.variant)
    unknown = sorted(set(space.names) - set(PARAM_NAMES))
    if unknown:
        raise InputError(unknown[0], f"is not a LoRA hyperparameter; allowed: {', '.join(PARAM_NAMES)}")
    if {"alpha", "alpha_ratio"} <= set(space.names):
        raise InputError("alpha_ratio", "a space may set alpha or alpha_ratio, not both")
    LoraHyperparams.from_params(space.fixed)
    for param in space.params:  # every value a sampler may propose must make a valid config
        edges = param.values() if isinstance(param, Listed) else (param.low, param.high)
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
    check_encoding(splits.train, splits.task, cfg.model or "minilm", model, max_length=cfg.max_length,
                   loss_on=cfg.loss_on, packing=cfg.packing)
    return space, splits, model, TrainSettings(
        max_length=cfg.max_length, epochs=cfg.epochs, seed=cfg.seed, device=cfg.device, precision=cfg.precision,
        quantize=cfg.quantize, gradient_checkpointing=cfg.gradient_checkpointing, group_by_length=cfg.group_by_length,
        loss_on=cfg.loss_on, packing=cfg.packing, max_micro_batch=cfg.max_micro_batch, compile=cfg.compile)


def proxy_plan(cfg: LoraRunConfig, space: SearchSpace, splits: DatasetSplits, settings: TrainSettings) -> ProxyPlan:
    """How long each trial trains, on which rows, ranked by which metric (``lmtune.finetune.proxy``)."""
    task_metric = metric_name(splits.task, settings)
    metric = cfg.proxy_metric or DEFAULT_PROXY_METRIC
    if metric not in ("eval_loss", task_metric):
        raise InputError("proxy_metric", f"{metric!r} is not a metric of a {splits.task} task; allowed: "
                         f"eval_loss, {task_metric}")
    return plan_proxy(len(splits.train), space, cfg.proxy, epochs=cfg.epochs, fraction=cfg.proxy_fraction,
                      metric=metric, min_steps=settings.min_steps)


def trial_objective(cfg: LoraRunConfig, space: SearchSpace, splits: DatasetSplits, model: str,
                    settings: TrainSettings, plan: ProxyPlan, progress=None) -> tuple[LoraObjective, int]:
    """The objective that trains the proxy, and how many times each trial evaluates."""
    # An evaluation of the validation split can cost more than the steps between two: a step-sized trial
    # evaluates at the middle and at the end, or at four even points where a pruner decides (its first rung is
    # the first). An epoch-sized one keeps lmtune's earlier four.
    evals = settings.eval_points if plan.epoch_sized else PRUNED_EVALS if cfg.pruner != "none" else PLAIN_EVALS
    trial_settings = dataclasses.replace(settings, eval_points=evals,
                                         exact_match=settings.exact_match and plan.metric != "eval_loss")
    objective = LoraObjective(space, splits, model=model, proxy_fraction=plan.fraction, settings=trial_settings,
                              seed=cfg.seed, target_modules=cfg.target_modules, progress=progress,
                              metric=plan.metric, plan=plan)
    return objective, evals


@dataclass(frozen=True)
class LoraSearch:
    """The parts of one LoRA search, made by ``build_search``: ``tune_lora`` runs them, ``worker_parts`` hands
    them to a worker."""

    cfg: LoraRunConfig
    space: SearchSpace
    splits: DatasetSplits
    model: str
    settings: TrainSettings
    plan: ProxyPlan
    objective: LoraObjective
    pruner: optuna.pruners.BasePruner
    sampler: BaseSampler
    #: The config's sampler name (for ``auto``, what it runs: ``AutoSampler.describe``), or the class name of a
    #: sampler object passed to ``tune_lora``.
    sampler_name: str
    #: The earlier studies and tables the sampler remembers (``lmtune.lora.memory``).
    memory: Memory

    @property
    def attrs(self) -> dict[str, Any]:
        """What the study searches; resuming or joining it with anything else is refused. The data is compared by
        what was loaded (``DatasetSplits.fingerprint``), not by its path as typed. The proxy and the pruner are
        compared too, so a resumed multi-fidelity study keeps its rungs."""
        cfg, plan = self.cfg, self.plan
        return {"space": self.space.to_dict(), "model": str(cfg.model or "minilm"),
                DATA_FINGERPRINT: self.splits.fingerprint(), "proxy_fraction": plan.fraction,
                "max_length": cfg.max_length, "seed": cfg.seed,
                "proxy": {"steps": plan.steps, "share": plan.share, "epochs": plan.epochs, "metric": plan.metric},
                "pruner": cfg.pruner}

    @property
    def stop_when(self) -> ComputeBudget:
        return ComputeBudget(steps=self.cfg.budget_steps, seconds=self.cfg.budget_seconds,
                             trial_steps=self.plan.longest)

    @property
    def constant_score(self) -> dict[str, Any] | None:
        return constant_score(self.splits, self.objective.task_metric)

    @property
    def storage_shown(self) -> str:
        return mask_url(normalize_url(self.cfg.storage))

    def hyperparams(self, trial: FrozenTrial) -> LoraHyperparams:
        return LoraHyperparams.from_params({**trial.params, **self.space.fixed})


def build_search(cfg: LoraRunConfig, *, sampler: BaseSampler | None = None,
                 listener: TrialListener | None = None) -> LoraSearch:
    """Check every input and make the search's parts; bad input raises ``InputError`` here, before storage is
    touched (an agent's endpoint answers here too). ``sampler`` replaces the config's."""
    space, splits, model, settings = prepare_run(cfg)
    memory = resolve_memory(cfg, space) if sampler is None else Memory(tuple(cfg.memory))
    plan = proxy_plan(cfg, space, splits, settings)
    objective, evals = trial_objective(cfg, space, splits, model, settings, plan,
                                       listener.step if listener is not None else None)
    first, last = plan.rungs(evals)
    pruner = make_pruner(cfg.pruner, min_resource=first, max_resource=last)
    description = describe_task(model=cfg.model, dataset=splits.name, task=splits.task, metric=objective.metric_name,
                                direction=objective.direction, fixed=space.fixed)
    chosen = sampler or lora_sampler(cfg, space, memory, description)
    name = type(sampler).__name__ if sampler is not None else getattr(chosen, "describe", lambda: cfg.sampler)()
    return LoraSearch(cfg, space, splits, model, settings, plan, objective, pruner, chosen, name, memory)


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
                         "use the same data or another `study_name`")


def warn_if_tiny(plan: ProxyPlan, settings: TrainSettings) -> None:
    """Say when an epoch-sized proxy is too small for the largest batch to take ``min_steps`` optimizer steps,
    and what else about the proxy deserves a look (a trial longer than a full run, passes over its rows)."""
    batch = max(plan.batch_sizes)
    steps = full_run_steps(plan.rows, batch, settings.epochs)
    if plan.epoch_sized and steps < settings.min_steps:
        log.warning("the proxy subset holds %d rows: at batch %s a trial would take %d optimizer step(s), so each "
                    "takes %d (passing over its rows again); more data or a larger `proxy_fraction` measures "
                    "configs better", plan.rows, batch, steps, settings.min_steps)
    for note in plan.notes:
        log.warning("proxy: %s", note)


def job_config(cfg: LoraRunConfig, memory: Memory | None = None) -> dict[str, Any]:
    """The fields a worker needs to rebuild this run's objective and sampler (local paths made absolute; with
    ``memory``, the studies and tables it found, so that workers remember the same)."""
    job = cfg.model_dump(mode="json", exclude=LOCAL_FIELDS)
    for name in PATH_FIELDS:
        if isinstance(job.get(name), str) and Path(job[name]).exists():
            job[name] = str(Path(job[name]).resolve())
    if memory is not None:
        job["memory"] = memory.job_value
    return job


def lora_sampler(cfg: LoraRunConfig, space: SearchSpace, memory: Memory, description: str) -> BaseSampler:
    """The configured sampler (``make_sampler``); ``language-bo+`` also gets this study's description and its
    memory."""
    options = dict(cfg.sampler_options)
    if cfg.sampler in PLUS_OPTIONS:
        options["description"] = description
    if memory.sources:
        options["transfer"] = memory.sources
    return make_sampler(cfg.sampler, space=space, **options)


def open_search_study(search: LoraSearch) -> optuna.Study:
    """Create or resume the search's study (storage is first touched here), publish its job for workers and
    store the score of a constant answer."""
    cfg = search.cfg
    storage = make_storage(cfg.storage, heartbeat_interval=cfg.heartbeat_interval, grace_period=cfg.grace_period)
    warn_if_tiny(search.plan, search.settings)
    check_same_data(storage, cfg.study_name, search.splits)
    study = open_study(cfg.study_name, storage=storage, sampler=search.sampler, pruner=search.pruner,
                       direction=search.objective.direction, attrs=search.attrs,
                       info={"dataset": search.splits.name, "task": search.splits.task},
                       metric_names=[search.objective.metric_name])
    publish_job(study, "lora", "lmtune.lora.tune:worker_parts", job_config(cfg, search.memory), cfg.trials)
    constant = search.constant_score
    if constant is not None and attrs.CONSTANT_SCORE not in study.user_attrs:
        study.set_user_attr(attrs.CONSTANT_SCORE, constant)
    return study
