"""Train one LoRA adapter with a plain PyTorch loop, evaluating at a few points along the way.

A plain loop (rather than ``transformers.Trainer``) keeps each trial cheap to start, lets the Optuna objective
see every evaluation as it happens (for pruning), and makes failure explicit: a run that diverges raises
:class:`~lmtune.errors.TrialFailed` instead of returning a score.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import (
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_cosine_schedule_with_warmup,
)

from lmtune._compat import accepts_logits_to_keep
from lmtune.errors import InputError, TrialFailed
from lmtune.finetune.batches import (
    IGNORE_INDEX,
    chunks,
    example_length,
    grouped_batches,
    pad_sequences,
    response_targets,
    shuffled_batches,
    to_device,
)
from lmtune.finetune.device import PRECISIONS, QUANTIZE, Precision, prepare_hardware
from lmtune.finetune.divergence import DivergenceGuard
from lmtune.finetune.hparams import LoraHyperparams
from lmtune.finetune.peft_model import attach_adapter, prepare_base, save_adapter, save_initial_adapter
from lmtune.finetune.proxy import full_run_steps
from lmtune.finetune.reuse import ReusableBase

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
    attention mask, and a causal LM's output head runs only at scored positions.
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
    peft_model, options = None, dict(task=task, tokenizer=tokenizer, num_labels=num_labels, seed=settings.seed,
                                     device=device, precision=precision, quantize=settings.quantize,
                                     gradient_checkpointing=settings.gradient_checkpointing)
    try:
        if reuse is not None:
            peft_model, tokenizer = reuse.acquire(model, hp, target_modules=target_modules, **options)
        else:
            base, tokenizer = prepare_base(model, **options)
            peft_model = attach_adapter(base, hp, task=task, target_modules=target_modules)
        run = TrainingRun(peft_model, tokenizer, task, metric, settings, precision=precision)
        encode = run.encode if reuse is None else lambda rows: reuse.encoded(rows, run)
        trajectory, step_losses = _fit_and_save(run, encode(train_rows), encode(eval_rows), hp, on_eval, on_step,
                                                save_adapter_to, label_names)
    except TrialFailed:
        raise
    except RuntimeError as error:  # torch.cuda.OutOfMemoryError is a RuntimeError too
        if "out of memory" in str(error).lower():
            raise TrialFailed(f"out of memory: {str(error).splitlines()[0]}") from error
        raise
    finally:
        if reuse is not None and peft_model is not None:
            reuse.release(peft_model)
    final = trajectory[-1]
    return TrainResult(metric_name=metric, metric=final[metric], eval_loss=final["eval_loss"],
                       trajectory=trajectory, train_seconds=time.perf_counter() - started,
                       steps=final["step"], train_examples=len(train_rows), step_losses=step_losses)


def _fit_and_save(run: TrainingRun, train, evaluation, hp: LoraHyperparams, on_eval, on_step,
                  save_adapter_to: Path | None, label_names: list[str] | None) -> tuple[list[dict], list[float]]:
    """Train, then save the adapter if asked; a PiSSA adapter's initial state is kept aside first, so that the
    saved adapter applies to the unmodified base (``save_adapter``)."""
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
    device (see ``TrainSettings``); the CPU path computes exactly what it did before (tables stay reproducible).
    """

    def __init__(self, model, tokenizer, task: str, metric: str, settings: TrainSettings,
                 precision: Precision | None = None):
        self.model, self.tokenizer, self.task, self.metric = model, tokenizer, task, metric
        self.settings = settings
        self.device = next(model.parameters()).device
        self.precision = precision or Precision("fp32")
        on_cpu = self.device.type == "cpu"
        self.read_every = 1 if on_cpu else settings.check_every
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.keep_logits = not on_cpu and task == "causal" and accepts_logits_to_keep(base)

    def encode(self, rows: list[dict]) -> list[tuple[list[int], int | list[int]]]:
        """Tokenize once per run: (text ids, label) or (prompt ids, response ids + eos), within max_length."""
        max_length = self.settings.max_length
        if self.task == "classification":
            ids = self.tokenizer([row["text"] for row in rows], truncation=True, max_length=max_length,
                                 return_token_type_ids=False)["input_ids"]
            return [(text, row["label"]) for text, row in zip(ids, rows, strict=True)]
        prompts = self.tokenizer([row["prompt"] for row in rows], return_token_type_ids=False)["input_ids"]
        responses = self.tokenizer([row["response"] for row in rows], add_special_tokens=False,
                                   return_token_type_ids=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        return [_fit(prompt, response + [eos], max_length)
                for prompt, response in zip(prompts, responses, strict=True)]

    def fit(self, train, evaluation, hp: LoraHyperparams, on_eval, on_step) -> tuple[list[dict], list[float]]:
        """AdamW with cosine decay after linear warmup over ``epochs`` passes of seeded shuffles.

        Returns the evaluation records and the training loss of every step.
        """
        settings = self.settings
        steps_per_epoch = math.ceil(len(train) / hp.batch_size)
        total = planned_steps(len(train), hp.batch_size, settings)
        eval_at = {math.ceil(total * k / settings.eval_points) for k in range(1, settings.eval_points + 1)}
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        # weight_decay=0 as in transformers.Trainer's default: decay would pull LoRA updates back to zero
        fused = {"fused": True} if self.device.type == "cuda" else {}  # Trainer's default optimizer on CUDA
        optimizer = torch.optim.AdamW(trainable, lr=hp.learning_rate, weight_decay=0.0, **fused)
        warmup = min(math.ceil(settings.warmup_ratio * total), total - 1)  # the last step never has lr 0
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.scaled)  # float16 only
        guard = DivergenceGuard(settings.divergence_factor)
        batches = (grouped_batches([example_length(x) for x in train], hp.batch_size, settings.seed)
                   if settings.group_by_length else shuffled_batches(len(train), hp.batch_size, settings.seed))
        trajectory: list[dict] = []
        losses: list[float] = []
        step_losses: list[float] = []
        unread: list[torch.Tensor] = []  # losses still on the device
        self.model.train()
        for step in range(1, total + 1):
            loss_sum, count, _ = self.loss_of([train[i] for i in next(batches)])
            loss = loss_sum / count
            unread.append(loss.detach())
            if len(unread) >= self.read_every or step in eval_at or step == total:
                first = step - len(unread) + 1
                for offset, value in enumerate(torch.stack(unread).tolist()):  # one wait for the device
                    losses.append(value)
                    step_losses.append(value)
                    guard.check(value, first + offset)
                unread = []
            scaler.scale(loss).backward()
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
            result["exact_match"] = self._exact_match(examples)
        return result

    def loss_of(self, examples) -> tuple[torch.Tensor, int, torch.Tensor]:
        """Summed loss over a right-padded batch, the number of scored targets, and the logits."""
        pad = self.tokenizer.pad_token_id
        if self.task == "classification":
            input_ids, mask = pad_sequences([ids for ids, _ in examples], pad, self.device)
            mask = self._mask(mask, examples)
            labels = to_device(torch.tensor([label for _, label in examples]), self.device)
            with self.precision.context(self.device):
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits.float()
            return F.cross_entropy(logits, labels, reduction="sum"), len(examples), logits
        input_ids, mask = pad_sequences([p + r for p, r in examples], pad, self.device)
        mask = self._mask(mask, examples)
        count = sum(len(r) - (not p) for p, r in examples)  # scored targets, counted here: no wait for the device
        if self.keep_logits:
            loss, logits = self._response_loss(examples, input_ids, mask)
            return loss, count, logits
        labels, _ = pad_sequences([[IGNORE_INDEX] * len(p) + r for p, r in examples], IGNORE_INDEX, self.device)
        with self.precision.context(self.device):
            logits = self.model(input_ids=input_ids, attention_mask=mask).logits.float()
        targets = labels[:, 1:]
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
        return loss, count, logits

    def _mask(self, mask, examples):
        """None for a batch without padding off the CPU: transformers would test the mask on the device (a wait)."""
        return mask if self.device.type == "cpu" or len({example_length(x) for x in examples}) > 1 else None

    def _response_loss(self, examples, input_ids, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed loss, logits) with the output head only where some row has a target (a 150k vocabulary's head
        is much of a small model's work, its float32 logits most of a step's memory)."""
        positions, targets = response_targets(examples)
        keep = to_device(torch.tensor(positions, dtype=torch.long), self.device)
        with self.precision.context(self.device):
            logits = self.model(input_ids=input_ids, attention_mask=mask, logits_to_keep=keep).logits.float()
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), to_device(targets, self.device).reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
        return loss, logits

    def _exact_match(self, examples) -> float:
        """Share of greedy generations equal to the reference after whitespace normalisation.

        Both sides are decoded by the tokenizer, so its normalisation (e.g. lower-casing) is not a miss.
        """
        tokenizer = self.tokenizer
        config = GenerationConfig(max_new_tokens=self.settings.max_new_tokens, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        hits = 0
        for chunk in chunks(examples, self.settings.eval_batch_size):
            input_ids, mask = pad_sequences([p for p, _ in chunk], tokenizer.pad_token_id, self.device, left=True)
            with self.precision.context(self.device):
                output = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
            for generated, (_, reference) in zip(output[:, input_ids.size(1):], chunk, strict=True):
                hits += _normalise(tokenizer.decode(generated, skip_special_tokens=True)) == _normalise(
                    tokenizer.decode(reference, skip_special_tokens=True))
        return hits / len(examples)


def _fit(prompt: list[int], response: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Trim a prompt/response pair to ``max_length`` tokens, keeping the end of the prompt (up to half the
    budget when the response is long) and the start of the response, so some response is always scored."""
    if len(prompt) + len(response) <= max_length:
        return prompt, response
    keep = min(len(prompt), max(max_length - len(response), max_length // 2))
    return prompt[len(prompt) - keep:], response[: max_length - keep]


def _normalise(text: str) -> str:
    return " ".join(text.split())
