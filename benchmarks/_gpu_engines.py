"""The trials ``benchmarks/gpu.py`` times: lmtune's LoRA trial in each variant (precision, packing, fused
cross-entropy, compile, a 4-bit base) and ``transformers.Trainer`` + PEFT (with Liger-Kernel where it installs) on
the same base, data, batch, schedule and evaluation, and the model FLOPs a step does.

Model FLOPs of a LoRA step on a frozen base, per training token (the formula of "PaLM: Scaling Language Modeling
with Pathways", appendix B, with the weight gradients of the frozen base left out):

    4 * N_base + 6 * N_lora + 12 * L * d * T

- forward through the base: 2 * N_base (N_base: the weights of every matrix multiply, the output head included,
  the input embedding not: a lookup);
- backward through the base: 2 * N_base for the activations' gradients only (its weights are frozen, so the
  other 2 * N_base of a full fine-tune's backward pass is never done);
- LoRA's own matrices: 6 * N_lora (forward, activations' and weights' gradients);
- attention's two products per layer (scores and values): 4 * d * T forward, twice that backward, over L layers
  with d the hidden width and T the mean example length, causal masking not subtracted (as PaLM counts it).

The output head is counted at every token, as if every position were scored (lmtune scores only the positions
that carry the loss, so its useful FLOPs are fewer). Model FLOPs utilization (MFU) is these FLOPs over a window of
steps, per second, divided by the device's dense peak for the precision (bf16, or TF32 for fp32: lmtune turns
TF32 on for CUDA, for every engine in the process).
"""

from __future__ import annotations

import dataclasses
import math
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from _gpu_timing import StepWindow, peak_gib, reset_peak, sync
from transformers import Qwen2Config, Qwen2ForCausalLM

from lmtune._compat import unload_adapter
from lmtune.finetune.data import load_dataset
from lmtune.finetune.device import prepare_hardware
from lmtune.finetune.encode import encode_rows
from lmtune.finetune.hparams import LoraHyperparams
from lmtune.finetune.peft_model import prepare_base
from lmtune.finetune.reuse import ReusableBase
from lmtune.finetune.train import TrainSettings, train_and_evaluate

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: Qwen2 shapes (hidden, intermediate, layers, heads, kv heads, vocabulary, tied embeddings), as their configs.
SHAPES = {
    "0.5b": (896, 4864, 24, 14, 2, 151936, True),
    "1.5b": (1536, 8960, 28, 12, 2, 151936, True),
    "7b": (3584, 18944, 28, 28, 4, 152064, False),
    "tiny": (64, 128, 2, 4, 2, 30528, True),
}
HP = LoraHyperparams(rank=16, alpha=32.0, learning_rate=1e-4, batch_size=8, dropout=0.05)
#: Dense peak TFLOP/s (bf16, TF32) of the cards a session may be lent, from NVIDIA's data sheets (SXM boards).
PEAK_TFLOPS = {"H200": (989.4, 494.7), "H100": (989.4, 494.7), "A100": (312.0, 156.0)}


@dataclass(frozen=True)
class Variant:
    """One way to run the trial: which engine, in which precision, with which of lmtune's options."""

    name: str
    engine: str
    precision: str
    packing: bool = False
    cross_entropy: str = "plain"
    compile: bool = False
    quantize: str = "none"


VARIANTS = {v.name: v for v in (
    Variant("fp32", "lmtune", "fp32"), Variant("bf16", "lmtune", "bf16"),
    Variant("bf16-packed", "lmtune", "bf16", packing=True), Variant("bf16-compile", "lmtune", "bf16", compile=True),
    Variant("bf16-liger", "lmtune", "bf16", cross_entropy="liger"),
    Variant("bf16-4bit", "lmtune", "bf16", quantize="4bit"),
    Variant("trainer-fp32", "trainer", "fp32"), Variant("trainer-bf16", "trainer", "bf16"),
    Variant("trainer-bf16-liger", "trainer", "bf16", cross_entropy="liger"),
)}


def qwen2_config(shape: str) -> Qwen2Config:
    hidden, inter, layers, heads, kv, vocab, tied = SHAPES[shape]
    return Qwen2Config(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                       tie_word_embeddings=tied, max_position_embeddings=32768, rope_theta=1e6)


def build(shape: str, device: torch.device):
    """A Qwen2 causal LM of ``shape`` with random weights, initialized on the device (fast), parked on the CPU."""
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(qwen2_config(shape))
    return model.to("cpu")


def sft_rows(count: int, offset: int) -> list[dict]:
    """BBC News SFT rows of many lengths (prompt: the article's first 20 to 420 words, seeded; response: its topic),
    as chat and instruction data are: padded batches waste work that packing recovers."""
    splits = load_dataset()
    rows = (splits.train + splits.validation)[offset:offset + count]
    draw = random.Random(offset)
    return [{"prompt": " ".join(row["text"].split()[:draw.randint(20, 420)]) + "\n\nTopic:",
             "response": " " + splits.label_names[row["label"]]} for row in rows]


@dataclass
class Row:
    shape: str
    variant: str
    engine: str
    precision: str
    trial_s: float
    tokens: int
    steps: int
    eval_loss: float
    peak_gib: float | None
    ms_per_step: float | None
    idle_share: float | None
    mfu: float | None = None
    note: str = ""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.trial_s


@dataclass
class Setup:
    device: torch.device
    tokenizer: Any
    train: list[dict]
    evaluation: list[dict]
    settings: TrainSettings
    window: tuple[int, int]
    peak_tflops: tuple[float, float] | None = None
    cache: dict = field(default_factory=dict)


def run_variant(setup: Setup, model, variant: Variant, shape: str) -> Row:
    """A warm-up trial whose steps the window profiles, then the same trial timed alone; the row of both."""
    trial = (trainer_trial if variant.engine == "trainer" else lmtune_trial)(setup, model, variant)
    window = StepWindow(setup.device, *setup.window)
    trial(window)
    reset_peak(setup.device)
    sync(setup.device)
    started = time.perf_counter()
    loss = trial(None)
    sync(setup.device)
    elapsed = time.perf_counter() - started
    tokens, steps = workload(setup)
    row = Row(shape, variant.name, "Trainer + PEFT" if variant.engine == "trainer" else "lmtune", variant.precision,
              elapsed, tokens, steps, loss, peak_gib(setup.device), window.ms_per_step, window.idle_share,
              note=window.error or "")
    row.mfu = utilization(setup, model, row)
    return row


def lmtune_trial(setup: Setup, model, variant: Variant) -> Callable:
    """``trial(window)``: one lmtune trial on a kept base (as trials of a study run); a 4-bit base is loaded from a
    folder, since bitsandbytes quantizes while loading."""
    settings = dataclasses.replace(setup.settings, precision=variant.precision, device=str(setup.device),
                                   packing=variant.packing, cross_entropy=variant.cross_entropy,
                                   compile=variant.compile, quantize=variant.quantize)
    source = saved(setup, model) if variant.quantize != "none" else model
    reuse = ReusableBase()

    def trial(window):
        try:
            return train_and_evaluate(HP, setup.train, setup.evaluation, task="causal", model=source,
                                      tokenizer=setup.tokenizer, settings=settings, target_modules=LINEAR,
                                      on_step=window, reuse=reuse).eval_loss
        finally:
            if window is None:
                reuse.clear()

    return trial


def saved(setup: Setup, model) -> str:
    """The model and tokenizer in a folder of this run (once)."""
    if "folder" not in setup.cache:
        setup.cache["folder"] = tempfile.mkdtemp(prefix="lmtune-gpu-")
        model.save_pretrained(setup.cache["folder"])
        setup.tokenizer.save_pretrained(setup.cache["folder"])
    return setup.cache["folder"]


def trainer_trial(setup: Setup, model, variant: Variant) -> Callable:
    """``trial(window)``: the same trial through ``transformers.Trainer`` + ``peft.get_peft_model``."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    _, chosen = prepare_hardware(str(setup.device), variant.precision)
    base, tokenizer = prepare_base(model, task="causal", tokenizer=setup.tokenizer, device=setup.device,
                                   precision=chosen)
    train, evaluation = trainer_rows(setup, setup.train), trainer_rows(setup, setup.evaluation)
    _, total = workload(setup)

    class Window(TrainerCallback):
        def __init__(self, window):
            self.window = window

        def on_step_end(self, args, state, control, **kwargs):
            if self.window is not None:
                self.window(state.global_step)

    def trial(window):
        lora = LoraConfig(task_type=TaskType.CAUSAL_LM, r=HP.rank, lora_alpha=HP.alpha, lora_dropout=HP.dropout,
                          target_modules=LINEAR)
        peft_model = get_peft_model(base, lora)
        with tempfile.TemporaryDirectory() as scratch:
            args = TrainingArguments(
                output_dir=scratch, per_device_train_batch_size=HP.batch_size,
                per_device_eval_batch_size=setup.settings.eval_batch_size, max_steps=total,
                learning_rate=HP.learning_rate, lr_scheduler_type="cosine",
                warmup_steps=min(math.ceil(setup.settings.warmup_ratio * total), total - 1), weight_decay=0.0,
                max_grad_norm=0.0, bf16=chosen.name == "bf16", eval_strategy="steps", eval_steps=math.ceil(total / 2),
                prediction_loss_only=True, logging_steps=total, save_strategy="no", report_to="none",
                disable_tqdm=True, seed=0, label_names=["labels"], use_cpu=setup.device.type == "cpu",
                use_liger_kernel=variant.cross_entropy == "liger",
                optim="adamw_torch_fused" if setup.device.type == "cuda" else "adamw_torch")
            trainer = Trainer(model=peft_model, args=args, train_dataset=train, eval_dataset=evaluation,
                              data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
                              callbacks=[Window(window)])
            trainer.train()
            losses = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
        unload_adapter(peft_model)
        return losses[-1] if losses else float("nan")

    return trial


def trainer_rows(setup: Setup, rows: list[dict]) -> list[dict]:
    """lmtune's encoding of ``rows`` as Trainer's columns (a list: Trainer takes any sized dataset, and the GPU
    image has no ``datasets`` package)."""
    encoded = encode_rows(rows, setup.tokenizer, "causal", setup.settings.max_length)
    return [{"input_ids": x.ids, "attention_mask": [1] * len(x.ids), "labels": x.labels} for x in encoded]


def workload(setup: Setup) -> tuple[int, int]:
    """Training tokens (one epoch of the rows, no padding) and optimizer steps, the same for every engine."""
    if "workload" not in setup.cache:
        tokens = sum(len(x.ids) for x in encode_rows(setup.train, setup.tokenizer, "causal", setup.settings.max_length))
        steps = max(setup.settings.min_steps, math.ceil(len(setup.train) / HP.batch_size))
        setup.cache["workload"] = (tokens, steps)
    return setup.cache["workload"]


def flops_per_token(model, mean_length: float, rank: int = HP.rank) -> float:
    """``4 * N_base + 6 * N_lora + 12 * L * d * T`` (the module docstring says why)."""
    config = model.config
    linear = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    base = sum(m.in_features * m.out_features for m in linear)  # lm_head included, the embedding lookup not
    lora = sum(rank * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in LINEAR)
    return 4 * base + 6 * lora + 12 * config.num_hidden_layers * config.hidden_size * mean_length


def utilization(setup: Setup, model, row: Row) -> float | None:
    """Model FLOPs per second over the step window, as a share of the device's peak for the row's precision."""
    if setup.peak_tflops is None or row.ms_per_step is None:
        return None
    examples = len(setup.train)
    per_step = flops_per_token(model, row.tokens / examples) * row.tokens / row.steps
    peak = setup.peak_tflops[0 if row.precision == "bf16" else 1] * 1e12
    return per_step / (row.ms_per_step / 1000) / peak


def peak_of(device: torch.device, override: list[float] | None) -> tuple[float, float] | None:
    """The device's (bf16, TF32) dense peak in TFLOP/s: ``override``, else from its name; None if unknown."""
    if override:
        return override[0], override[-1]
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for card, peak in PEAK_TFLOPS.items() if card in name and "PCIe" not in name), None)
