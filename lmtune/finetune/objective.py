"""The Optuna objective: one trial = one LoRA fine-tune on a proxy subset, scored on validation."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import optuna
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmtune import attrs
from lmtune.errors import TrialFailed
from lmtune.finetune.data import DatasetSplits, proxy_subset
from lmtune.finetune.hparams import LoraHyperparams
from lmtune.finetune.proxy import ProxyPlan, ShareProxy, plan_proxy
from lmtune.finetune.reuse import ReusableBase
from lmtune.finetune.train import TrainSettings, metric_direction, metric_name, train_and_evaluate


class SpaceLike(Protocol):
    """Anything that samples a LoRA parameter dict (``alpha_ratio`` allowed) from a trial."""

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]: ...


class LoraObjective:
    """Callable Optuna objective: trial -> validation metric.

    With neither ``plan`` nor ``proxy_fraction`` it trains what ``lmtune lora`` trains by default: 30% of each
    config's own full run (``ShareProxy``) on batches from the whole training split, ranked by the validation
    loss (``space`` must then be a ``SearchSpace``, whose batch sizes size the proxy). Otherwise every trial
    trains on the same seeded ``proxy_fraction`` of the training split, so trials differ only in their
    hyperparameters; ``settings.steps`` (when set) gives every trial that many optimizer steps whatever its batch
    size, and a ``plan`` (``lmtune.finetune.proxy``) sets each trial's steps from its batch size and the axis its
    reports lie on (steps, or training examples when trials of different batch sizes take different steps).
    ``seed`` drives the proxy sample, shuffling and initialisation (it replaces ``settings.seed``). ``metric`` is
    what a trial returns and reports: ``"eval_loss"`` or the task's metric (default: the plan's, else the task's);
    both are recorded in the trajectory either way. Each evaluation is reported to the trial
    at its optimizer step, so a pruner can stop it early; a run that cannot produce a score raises
    ``TrialFailed`` with the reason in the ``fail_reason`` user attribute, so optimise with
    ``catch=(TrialFailed,)``. ``progress(step, total)`` is called after every training step. The steps a
    trial took (also a pruned or failed one) are its ``train_steps`` user attribute.
    With ``reuse_model`` (the default) the base model is loaded once and each trial attaches a fresh adapter to
    it (``lmtune.finetune.reuse``: the same results as a fresh build, which ``reuse_model=False`` makes).
    """

    def __init__(
        self,
        space: SpaceLike,
        splits: DatasetSplits,
        *,
        model: str | PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        proxy_fraction: float | None = None,
        settings: TrainSettings | None = None,
        seed: int = 0,
        target_modules: list[str] | None = None,
        progress: Callable[[int, int], None] | None = None,
        metric: str | None = None,
        reuse_model: bool = True,
        plan: ProxyPlan | None = None,
    ):
        self.space = space
        self.splits = splits
        self.model = model
        self.tokenizer = tokenizer
        self.settings = dataclasses.replace(settings or TrainSettings(), seed=seed)
        if plan is None and proxy_fraction is None:  # what `lmtune lora` runs by default
            plan = plan_proxy(len(splits.train), space, ShareProxy(), epochs=self.settings.epochs,
                              metric=metric or "eval_loss", min_steps=self.settings.min_steps)
        self.train_rows = proxy_subset(splits.train, plan.fraction if proxy_fraction is None else proxy_fraction, seed)
        self.target_modules = target_modules
        self.progress = progress
        self.task_metric = metric_name(splits.task, self.settings)
        if metric not in (None, self.task_metric, "eval_loss"):  # a config's metric is checked where it is read
            raise ValueError(f"metric {metric!r} is neither {self.task_metric} nor eval_loss")
        self.metric_name = metric or (plan.metric if plan is not None and plan.metric else self.task_metric)
        self.reuse = ReusableBase() if reuse_model else None
        self.plan = plan
        self.direction = metric_direction(self.metric_name)

    def __call__(self, trial: optuna.Trial) -> float:
        hp = LoraHyperparams.from_params(self.space.suggest(trial))
        trial.set_user_attr(attrs.HYPERPARAMS, hp.to_dict())
        trial.set_user_attr(attrs.METRIC_NAME, self.metric_name)
        trajectory: list[dict] = []
        steps = [0, 0]  # steps taken, steps planned
        settings = self.settings
        if self.plan is not None and not self.plan.epoch_sized:
            settings = dataclasses.replace(settings, steps=self.plan.trial_steps(hp.batch_size))
        resource = (lambda step: step) if self.plan is None else (lambda step: self.plan.resource(step, hp.batch_size))

        def on_step(step: int, total: int) -> None:
            steps[:] = [step, total]
            if self.progress is not None:
                self.progress(step, total)

        def on_eval(step: int, record: dict) -> None:
            trajectory.append(record)
            trial.set_user_attr(attrs.TRAJECTORY, trajectory)
            trial.report(record[self.metric_name], resource(step))
            # Optuna's successive halving has no last rung: it would prune a trial that already finished
            if step < steps[1] and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} with {self.metric_name} "
                                         f"{record[self.metric_name]:.4g}")

        try:
            result = train_and_evaluate(
                hp, self.train_rows, self.splits.validation, task=self.splits.task, model=self.model,
                tokenizer=self.tokenizer, label_names=self.splits.label_names, settings=settings,
                target_modules=self.target_modules, on_eval=on_eval, on_step=on_step, reuse=self.reuse,
            )
        except TrialFailed as error:
            trial.set_user_attr(attrs.FAIL_REASON, str(error))
            raise
        finally:
            trial.set_user_attr(attrs.TRAIN_STEPS, steps[0])
        trial.set_user_attr(attrs.EVAL_LOSS, result.eval_loss)
        trial.set_user_attr(attrs.TRAIN_SECONDS, result.train_seconds)
        trial.set_user_attr(attrs.TRAIN_EXAMPLES, result.train_examples)
        trial.set_user_attr(attrs.STEP_LOSSES, [round(loss, 5) for loss in result.step_losses])
        return result.trajectory[-1][self.metric_name]
