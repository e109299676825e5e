"""``tune_lora``: search LoRA configs on a proxy subset, retrain the best on all data, test it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from optuna.samplers import BaseSampler
from rich.console import Console

from lmtune.config import LoraRunConfig, build_config
from lmtune.errors import InputError
from lmtune.finetune.data import DatasetSplits, load_dataset, proxy_subset
from lmtune.finetune.hparams import PARAM_NAMES, VARIANTS, LoraHyperparams
from lmtune.finetune.objective import LoraObjective
from lmtune.finetune.peft_model import check_model
from lmtune.finetune.train import TrainSettings, train_and_evaluate
from lmtune.llm import resolve_model
from lmtune.progress import TrialProgress
from lmtune.report import best_trial, trial_rows, write_results
from lmtune.space import Categorical, SearchSpace, load_space
from lmtune.storage import make_storage, mask_url, normalize_url
from lmtune.study import counted_trials, make_pruner, make_sampler, open_study, publish_job, run_trials

#: Config fields that belong to one process, not to the study a worker joins.
LOCAL_FIELDS = {"storage", "study_name", "output_dir", "trials", "run", "heartbeat_interval", "grace_period",
                "final_train"}
#: Config fields that may name a local file or folder; a worker gets them as absolute paths.
PATH_FIELDS = ("model", "dataset", "space", "template", "encoder")


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
    splits = load_dataset(cfg.dataset, task=cfg.task, seed=cfg.seed)
    model = resolve_model(cfg.model)
    check_model(model)
    return space, splits, model, TrainSettings(max_length=cfg.max_length, epochs=cfg.epochs, seed=cfg.seed)


def study_attrs(cfg: LoraRunConfig, space: SearchSpace, splits: DatasetSplits) -> dict[str, Any]:
    """What a LoRA study searches; resuming or joining it with anything else is refused."""
    return {"space": space.to_dict(), "model": str(cfg.model or "minilm"), "dataset": splits.name,
            "proxy_fraction": cfg.proxy_fraction, "max_length": cfg.max_length, "seed": cfg.seed}


def job_config(cfg: LoraRunConfig) -> dict[str, Any]:
    """The fields a worker needs to rebuild this run's objective and sampler (local paths made absolute)."""
    job = cfg.model_dump(mode="json", exclude=LOCAL_FIELDS)
    for name in PATH_FIELDS:
        if job.get(name) and Path(job[name]).exists():
            job[name] = str(Path(job[name]).resolve())
    return job


def tune_lora(config: LoraRunConfig | None = None, *, sampler: BaseSampler | None = None,
              console: Console | None = None, **fields: Any) -> dict[str, Any]:
    """Run ``lmtune lora``: the study (resuming it if it exists), then the final retrain and test.

    Takes a :class:`LoraRunConfig` or its fields as keyword arguments; ``sampler`` may be any Optuna
    sampler object, which then replaces the one named in the config. Every input is checked
    before the study is opened, so bad input leaves nothing in storage. Returns the dict that is
    also written to ``results.json``.
    """
    cfg = config or build_config(LoraRunConfig, **fields)
    console = console or Console(stderr=True, soft_wrap=True)
    started = time.perf_counter()

    space, splits, model, settings = prepare_run(cfg)  # bad input fails here and below, before storage is touched
    sampler = sampler or make_sampler(cfg.sampler, space=space, **cfg.sampler_options)
    storage = make_storage(cfg.storage, heartbeat_interval=cfg.heartbeat_interval, grace_period=cfg.grace_period)
    objective = LoraObjective(space, splits, model=model, proxy_fraction=cfg.proxy_fraction,
                              settings=settings, seed=cfg.seed, target_modules=cfg.target_modules)
    study = open_study(cfg.study_name, storage=storage, sampler=sampler, pruner=make_pruner(cfg.pruner),
                       direction=objective.direction, attrs=study_attrs(cfg, space, splits))
    publish_job(study, "lora", job_config(cfg), cfg.trials)
    storage_shown = mask_url(normalize_url(cfg.storage))
    if not cfg.run:
        console.print(f"Study [bold]{cfg.study_name}[/] holds {len(counted_trials(study))} of {cfg.trials} trials. "
                      f"Start workers with: lmtune worker --storage '{storage_shown}' --study {cfg.study_name}")
        return {"study_name": cfg.study_name, "storage": storage_shown, "budget": cfg.trials,
                "finished": len(counted_trials(study))}

    already = len(counted_trials(study))
    if already:
        console.print(f"Resuming study [bold]{cfg.study_name}[/]: {already} of {cfg.trials} trials already finished.")
    with TrialProgress(console, cfg.trials, already) as progress:
        objective.progress = progress.step
        run_trials(study, objective, cfg.trials, callbacks=[progress.trial_done], on_wait=progress.waiting)

    best = best_trial(study)
    if best is None:
        reasons = {t.user_attrs.get("fail_reason", t.state.name) for t in counted_trials(study)}
        raise RuntimeError(f"no trial of study {cfg.study_name!r} completed: {'; '.join(sorted(map(str, reasons)))}")
    hp = LoraHyperparams.from_params({**best.params, **space.fixed})
    console.print(f"Best trial {best.number}: {objective.metric_name} {best.value:.4f} with {hp.to_dict()}")

    results: dict[str, Any] = {
        "study_name": cfg.study_name, "storage": storage_shown,
        "sampler": type(sampler).__name__,
        "space": space.name, "model": cfg.model or f"MiniLM ({model})", "dataset": splits.name, "task": splits.task,
        "metric_name": objective.metric_name, "direction": objective.direction,
        "proxy_fraction": cfg.proxy_fraction,
        "proxy_examples": len(proxy_subset(splits.train, cfg.proxy_fraction, cfg.seed)),
        "best": {"trial": best.number, "params": best.params, "hyperparams": hp.to_dict(), "proxy_metric": best.value},
        "trials": trial_rows(study),
    }
    if cfg.final_train:
        final = results["final"] = _final_train(hp, splits, model, settings, cfg, console)
        worse = final["test_metric"] < best.value if objective.direction == "maximize" else (
            final["test_metric"] > best.value)
        if worse:
            final["warning"] = (f"the full-data run scored {final['test_metric']:.4f} on test, worse than its proxy "
                                f"trial ({best.value:.4f}): the proxy did not predict full training for this config")
            console.print(f"[yellow]warning:[/] {final['warning']}")
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    json_path, md_path = write_results(cfg.out_dir, results)
    console.print(f"Wrote {json_path} and {md_path}")
    return results


def _final_train(hp: LoraHyperparams, splits: DatasetSplits, model: str, settings: TrainSettings,
                 cfg: LoraRunConfig, console: Console) -> dict[str, Any]:
    """Retrain the chosen config on the whole training split, test it, save the adapter."""
    adapter_dir = cfg.out_dir / "adapter"
    console.print(f"Retraining the best config on the full training split ({len(splits.train)} examples)...")
    with TrialProgress(console, None, 0) as progress:
        result = train_and_evaluate(hp, splits.train, splits.test, task=splits.task, model=model,
                                    settings=settings, label_names=splits.label_names,
                                    target_modules=cfg.target_modules, on_step=progress.step,
                                    save_adapter_to=adapter_dir)
    console.print(f"Test {result.metric_name}: {result.metric:.4f} (loss {result.eval_loss:.4f})")
    return {"test_metric": result.metric, "test_loss": result.eval_loss, "metric_name": result.metric_name,
            "train_seconds": round(result.train_seconds, 1), "train_examples": result.train_examples,
            "adapter_dir": str(adapter_dir)}
