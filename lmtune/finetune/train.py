"""Train one LoRA adapter with a plain PyTorch loop, evaluating at a few points along the way.

A plain loop (rather than ``transformers.Trainer``) keeps each trial cheap to start, lets the Optuna objective
see every evaluation as it happens (for pruning), and makes failure explicit: a run that diverges raises
:class:`~lmtune.errors.TrialFailed` instead of returning a score.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_cosine_schedule_with_warmup,
)

from lmtune._compat import accepts_logits_to_keep, attention_implementation
from lmtune.errors import InputError, TrialFailed
from lmtune.finetune.batches import chunks, example_length, grouped_batches, micro_batches, shuffled_batches, to_device
from lmtune.finetune.chat import chat_template
from lmtune.finetune.device import PRECISIONS, QUANTIZE, Precision, prepare_hardware
from lmtune.finetune.divergence import DivergenceGuard
from lmtune.finetune.encode import LOSS_ON, encode_rows
from lmtune.finetune.exact_match import exact_match
from lmtune.finetune.hparams import LoraHyperparams
from lmtune.finetune.loss import (
    CROSS_ENTROPY,
    LossOptions,
    block_mask_kind,
    causal_loss,
    check_cross_entropy,
    classification_loss,
)
from lmtune.finetune.peft_model import attach_adapter, prepare_base, save_adapter, save_initial_adapter
from lmtune.finetune.proxy import full_run_steps
from lmtune.finetune.reuse import ReusableBase
from lmtune.finetune.speed import adamw, compile_layers, free_memory, release_compiled

#: Optimizer steps a run takes at least (passing over a tiny subset again): one step trains almost nothing,
#: and with warmup it trained nothing at all, so every config of a tiny proxy scored the same.
MIN_STEPS = 4


@dataclass(frozen=True)
class TrainSettings:
    """How one run trains and evaluates; the searched hyperparameters live in ``LoraHyperparams``.

    ``eval_points`` evaluations are spread evenly over training, the last at the final step. A run takes at
    least ``min_steps`` optimizer steps, passing over its rows again if ``epochs`` would give fewer. ``steps``
    sets the number of optimizer steps outright (whatever the batch size and the number of rows; ``epochs``
    is then unused): a proxy sized by steps trains every config as many updates.
    ``exact_match`` scores causal runs by greedy generation against the reference responses; turn it off
    to score by eval loss alone, which is much faster. ``threads`` sets torch's CPU thread count.

    ``device`` (None: CUDA if present, else CPU), ``precision``, ``quantize`` and ``gradient_checkpointing``
    say how a run uses the hardware (``lmtune.finetune.device``); ``group_by_length`` batches examples of
    similar length (less padding, still seeded). On an accelerator losses are read every ``check_every`` steps
    and at evaluations (the divergence guard checks each step's loss then), unpadded batches go without an
    attention mask. A causal LM's output head runs only at the positions that carry the loss (``scored_logits``).

    ``loss_on`` (causal data): the assistant's tokens, the response or completion (``assistant``) or every token
    (``all``); ``packing`` puts several causal examples in one row, attention kept within each
    (``lmtune.finetune.batches.causal_batch``). ``max_micro_batch`` cuts a larger batch into micro-batches whose
    gradients add up to the batch's (the batch size, and so the run, stay the config's). ``fused_optimizer``,
    ``cross_entropy`` and ``compile`` are the step's implementation (``lmtune.finetune.speed``,
    ``lmtune.finetune.loss``); docs/benchmarks.md says which are on by default and why.
    """

    max_length: int = 128
    epochs: float = 1.0
    warmup_ratio: float = 0.03
    eval_points: int = 4
    eval_batch_size: int = 64
    divergence_factor: float = 4.0
    seed: int = 0
    max_new_tokens: int = 32
    exact_match: bool = True
    threads: int | None = None
    min_steps: int = MIN_STEPS
    steps: int | None = None
    device: str | None = None
    precision: str = "auto"
    quantize: str = "none"
    gradient_checkpointing: bool = False
    group_by_length: bool = False
    check_every: int = 32
    loss_on: str = "assistant"
    packing: bool = False
    max_micro_batch: int | None = None
    fused_optimizer: bool = True
    scored_logits: bool = True
    cross_entropy: str = "plain"
    compile: bool = False

    def __post_init__(self):
        checks = {
            "max_length": self.max_length >= 2,
            "epochs": self.epochs > 0,
            "warmup_ratio": 0 <= self.warmup_ratio < 1,
            "eval_points": self.eval_points >= 1,
            "eval_batch_size": self.eval_batch_size >= 1,
            "divergence_factor": self.divergence_factor > 1,
            "max_new_tokens": self.max_new_tokens >= 1,
            "threads": self.threads is None or self.threads >= 1,
            "min_steps": self.min_steps >= 1,
            "steps": self.steps is None or self.steps >= 1,
            "precision": self.precision in PRECISIONS,
            "quantize": self.quantize in QUANTIZE,
            "check_every": self.check_every >= 1,
            "loss_on": self.loss_on in LOSS_ON,
            "max_micro_batch": self.max_micro_batch is None or self.max_micro_batch >= 1,
            "cross_entropy": self.cross_entropy in CROSS_ENTROPY,
        }
        for field, ok in checks.items():
            if not ok:
                raise InputError(field, f"invalid value {getattr(self, field)!r}")


@dataclass
class TrainResult:
    """Outcome of one run; ``metric`` and ``eval_loss`` come from the evaluation at the final step.

    ``train_seconds`` is the wall time of the whole run: model build, training and every evaluation.
    """

    metric_name: str
    metric: float
    eval_loss: float
    trajectory: list[dict]
    train_seconds: float
    steps: int
    train_examples: int
    step_losses: list[float]


def metric_name(task: str, settings: TrainSettings) -> str:
    """The score a run reports: accuracy, exact match of generated responses, or eval loss."""
    if task == "classification":
        return "accuracy"
    return "exact_match" if settings.exact_match else "eval_loss"


def planned_steps(rows: int, batch_size: int, settings: TrainSettings) -> int:
    """Optimizer steps a run on ``rows`` examples takes at ``batch_size``: ``settings.steps`` when set, else
    ``epochs`` passes (at least ``min_steps``)."""
    return settings.steps or max(settings.min_steps, full_run_steps(rows, batch_size, settings.epochs))


def metric_direction(name: str) -> str:
    """Optuna study direction for a metric name."""
    return "minimize" if name == "eval_loss" else "maximize"


def train_and_evaluate(
    hp: LoraHyperparams,
    train_rows: list[dict],
    eval_rows: list[dict],
    *,
    task: str,
    model: str | PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    label_names: list[str] | None = None,
    settings: TrainSettings | None = None,
    target_modules: list[str] | None = None,
    on_eval: Callable[[int, dict], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    save_adapter_to: Path | None = None,
    reuse: ReusableBase | None = None,
) -> TrainResult:
    """Fine-tune a fresh LoRA adapter on ``train_rows`` and score it on ``eval_rows``.

    ``model`` is a path or hub id, ``None`` for the bundled MiniLM encoder, or a built model with its
    ``tokenizer``. ``on_eval(step, record)`` sees each trajectory record as it is made (exceptions it raises,
    such as ``optuna.TrialPruned``, stop the run); ``on_step(step, total)`` is for progress bars. Raises
    ``TrialFailed`` when the loss is not finite or diverges, or when the device runs out of memory.
    ``reuse`` keeps the base model between calls (``lmtune.finetune.reuse``); without it each call builds one.
    """
    started = time.perf_counter()
    settings = settings or TrainSettings()
    if not train_rows or not eval_rows:
        raise InputError("dataset", "training and evaluation both need at least one row")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device, precision = prepare_hardware(settings.device, settings.precision, settings.quantize, [hp.variant])
    metric = metric_name(task, settings)
    num_labels = None if task != "classification" else (
        len(label_names) if label_names else 1 + max(r["label"] for r in train_rows + eval_rows))
    options = dict(task=task, tokenizer=tokenizer, num_labels=num_labels, seed=settings.seed, device=device,
                   precision=precision, quantize=settings.quantize,
                   gradient_checkpointing=settings.gradient_checkpointing)
    with _lent_model(model, hp, reuse, target_modules, settings.compile, options) as (peft_model, tokenizer):
        run = TrainingRun(peft_model, tokenizer, task, metric, settings, precision=precision,
                          model_name=model if isinstance(model, str) else "the model")
        trajectory, step_losses = _fit_and_save(run, train_rows, eval_rows, reuse, hp, on_eval, on_step,
                                                save_adapter_to, label_names)
        del run
    free_memory(device)
    final = trajectory[-1]
    return TrainResult(metric_name=metric, metric=final[metric], eval_loss=final["eval_loss"],
                       trajectory=trajectory, train_seconds=time.perf_counter() - started,
                       steps=final["step"], train_examples=len(train_rows), step_losses=step_losses)


@contextlib.contextmanager
def _lent_model(model, hp: LoraHyperparams, reuse: ReusableBase | None, target_modules: list[str] | None,
                compiled: bool, options: dict) -> Iterator[tuple[PeftModel, PreTrainedTokenizerBase]]:
    """A fresh adapter on the base (kept by ``reuse``, or built), given back when the run ends however it ends,
    with whatever the run allocated freed; running out of memory is ``TrialFailed``."""
    peft_model = None
    try:
        if reuse is not None:
            peft_model, tokenizer = reuse.acquire(model, hp, target_modules=target_modules, **options)
        else:
            base, tokenizer = prepare_base(model, **options)
            peft_model = attach_adapter(base, hp, task=options["task"], target_modules=target_modules)
        yield peft_model, tokenizer
    except RuntimeError as error:  # torch.cuda.OutOfMemoryError is a RuntimeError too
        if "out of memory" in str(error).lower():
            raise TrialFailed(f"out of memory: {str(error).splitlines()[0]}") from error
        raise
    finally:
        if peft_model is not None and compiled:
            release_compiled(peft_model)
        if reuse is not None and peft_model is not None:
            reuse.release(peft_model)
        peft_model = None
        free_memory(options["device"])


def _fit_and_save(run: TrainingRun, train_rows: list[dict], eval_rows: list[dict], reuse: ReusableBase | None,
                  hp: LoraHyperparams, on_eval, on_step, save_adapter_to: Path | None,
                  label_names: list[str] | None) -> tuple[list[dict], list[float]]:
    """Encode (once per worker with ``reuse``), train, then save the adapter if asked; a PiSSA adapter's initial
    state is kept aside first, so that the saved adapter applies to the unmodified base (``save_adapter``)."""
    encode = run.encode if reuse is None else lambda rows: reuse.encoded(rows, run)
    train, evaluation = encode(train_rows), encode(eval_rows)
    with tempfile.TemporaryDirectory(prefix="lmtune-") as scratch:
        initial = None
        if save_adapter_to is not None and hp.variant == "pissa":
            initial = Path(scratch) / "initial"
            save_initial_adapter(run.model, initial)
        trajectory, step_losses = run.fit(train, evaluation, hp, on_eval, on_step)
        if save_adapter_to is not None:
            save_adapter(run.model, run.tokenizer, Path(save_adapter_to), initial_adapter=initial,
                         label_names=label_names)
    return trajectory, step_losses


class TrainingRun:
    """Encoding, batching, the training loop and evaluation for one model and task.

    ``precision`` (default float32) sets autocast and loss scaling. Off the CPU the host avoids waiting for the
    device (see ``TrainSettings``); on the CPU every step's loss is read as it is made.
    """

    def __init__(self, model, tokenizer, task: str, metric: str, settings: TrainSettings,
                 precision: Precision | None = None, model_name: str = "the model"):
        self.model, self.tokenizer, self.task, self.metric = model, tokenizer, task, metric
        self.settings, self.model_name = settings, model_name
        self.device = next(model.parameters()).device
        self.precision = precision or Precision("fp32")
        on_cpu = self.device.type == "cpu"
        self.read_every = 1 if on_cpu else settings.check_every
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        if settings.packing and task != "causal":
            raise InputError("packing", "packs causal examples; a classifier's batch has one example per row")
        if task == "causal":
            check_cross_entropy(settings.cross_entropy, model, self.device)
        self.options = LossOptions(
            pad_id=tokenizer.pad_token_id, device=self.device, precision=self.precision,
            keep_logits=settings.scored_logits and task == "causal" and accepts_logits_to_keep(base),
            packing=("flat" if "flash" in attention_implementation(base) else "rows") if settings.packing else None,
            capacity=settings.max_length, cross_entropy=settings.cross_entropy, mask_unpadded=on_cpu,
            bucket=settings.max_length if settings.compile else 0,
            block_mask=block_mask_kind(model, self.device) if task == "causal" else None)

    @property
    def keep_logits(self) -> bool:
        return self.options.keep_logits

    def encode(self, rows: list[dict]) -> list:
        """Tokenize once per run: (text ids, label) or ``CausalExample`` (``lmtune.finetune.encode``)."""
        template = chat_template(self.tokenizer, self.model_name) if rows and "messages" in rows[0] else None
        return encode_rows(rows, self.tokenizer, self.task, self.settings.max_length, self.settings.loss_on,
                           template)

    def fit(self, train, evaluation, hp: LoraHyperparams, on_eval, on_step) -> tuple[list[dict], list[float]]:
        """AdamW with cosine decay after linear warmup over ``epochs`` passes of seeded shuffles.

        Returns the evaluation records and the training loss of every step.
        """
        settings = self.settings
        steps_per_epoch = math.ceil(len(train) / hp.batch_size)
        total = planned_steps(len(train), hp.batch_size, settings)
        eval_at = {math.ceil(total * k / settings.eval_points) for k in range(1, settings.eval_points + 1)}
        optimizer = adamw([p for p in self.model.parameters() if p.requires_grad], hp.learning_rate, self.device,
                          settings.fused_optimizer)
        warmup = min(math.ceil(settings.warmup_ratio * total), total - 1)  # the last step never has lr 0
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.scaled)  # float16 only
        guard = DivergenceGuard(settings.divergence_factor)
        batches = (grouped_batches([example_length(x) for x in train], hp.batch_size, settings.seed)
                   if settings.group_by_length else shuffled_batches(len(train), hp.batch_size, settings.seed))
        if settings.compile:
            compile_layers(self.model)
        trajectory: list[dict] = []
        losses: list[float] = []
        step_losses: list[float] = []
        unread: list[torch.Tensor] = []  # losses still on the device
        self.model.train()
        for step in range(1, total + 1):
            unread.append(self._backward([train[i] for i in next(batches)], scaler))
            if len(unread) >= self.read_every or step in eval_at or step == total:
                first = step - len(unread) + 1
                for offset, value in enumerate(torch.stack(unread).tolist()):  # one wait for the device
                    losses.append(value)
                    step_losses.append(value)
                    guard.check(value, first + offset)
                unread = []
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if on_step is not None:
                on_step(step, total)
            if step in eval_at:
                record = {"step": step, "epoch": round(step / steps_per_epoch, 4),
                          "train_loss": sum(losses) / len(losses), **self.evaluate(evaluation)}
                losses = []
                if not math.isfinite(record["eval_loss"]):
                    raise TrialFailed(f"diverged: eval loss {record['eval_loss']} at step {step}")
                trajectory.append(record)
                if on_eval is not None:
                    on_eval(step, record)
                self.model.train()
        return trajectory, step_losses

    def _backward(self, batch: list, scaler) -> torch.Tensor:
        """The batch's mean loss (left on the device) and its gradients, one micro-batch at a time: each part's
        summed loss over the whole batch's target count, so the gradients add up to the batch's."""
        count = len(batch) if self.task == "classification" else sum(x.targets for x in batch)
        total = None
        for part in micro_batches(batch, self.settings.max_micro_batch):
            loss = self.loss_of(part)[0] / count
            scaler.scale(loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        return total

    @torch.no_grad()
    def evaluate(self, examples) -> dict:
        """Mean eval loss (per example, or per response token) plus accuracy or exact match."""
        self.model.eval()
        if self.settings.group_by_length:  # less padding; the sums do not depend on the order
            examples = sorted(examples, key=example_length, reverse=True)
        # summed on the device (float64, as Python summed the float32 items) and read once at the end
        loss_total, correct, count = torch.zeros((), dtype=torch.float64, device=self.device), 0, 0
        for chunk in chunks(examples, self.settings.eval_batch_size):
            loss_sum, n, logits = self.loss_of(chunk)
            loss_total, count = loss_total + loss_sum.double(), count + n
            if self.task == "classification":
                labels = to_device(torch.tensor([label for _, label in chunk]), self.device)
                correct += (logits.argmax(-1) == labels).sum()
        result = {"eval_loss": loss_total.item() / count}
        if self.metric == "accuracy":
            result["accuracy"] = int(correct) / len(examples)
        elif self.metric == "exact_match":
            result["exact_match"] = exact_match(self.model, self.tokenizer, examples, self.precision,
                                                self.settings.max_new_tokens, self.settings.eval_batch_size)
        return result

    def loss_of(self, examples) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        """Summed loss over a batch, the number of scored targets, and the logits (``lmtune.finetune.loss``)."""
        if self.task == "classification":
            return classification_loss(self.model, examples, self.options)
        return causal_loss(self.model, examples, self.options)
