"""Where a LoRA step's time goes on the host: lmtune's training loop (its code before and after a change, in one run)
against ``transformers.Trainer`` + PEFT, on a model with Qwen2-0.5B's 24 layers, heads and op graph but tiny widths.

At these widths a step's arithmetic is negligible, so its time is what a GPU run pays on the host for every step
whatever the model's size: the operations launched (each a kernel on a GPU), the Python around them, and the reads
of device values (each a wait for the GPU to drain). Each engine trains one adapter (rank 16, all linear layers)
for ``--steps`` steps at batch 8 on BBC News SFT rows (article openings of 6-35 words and their topic, agent-lm's
tokenizer, at most 64 tokens), in a process of
its own, one at a time, ``--rounds`` times interleaved; per step it reports the median wall and CPU time over the
timed steps, and from a ``torch.profiler`` window of two steps the ATen operations and the value reads
(``aten::_local_scalar_dense``, ``aten::is_nonzero``, ``aten::nonzero``), those inside ``Optimizer.step`` apart:
AdamW's step counters live on the host, so those reads never wait for a GPU.

``--path gpu`` runs lmtune's accelerator path on the CPU (losses read every 32 steps, the output head at scored
positions only, no all-ones attention mask; after issue 27 also ready 4D masks) so its value reads are what a GPU
would wait on.

    git -C . archive 464efdf | tar -x -C /tmp/lmtune-before    # the code before, outside any work tree
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/step_overhead.py \\
        --before /tmp/lmtune-before
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

SECTION = "step-overhead"
HERE = Path(__file__).resolve().parent
#: Qwen2-0.5B's layer count, heads and key-value heads (so its op graph), at tiny widths.
TINY_QWEN = {"hidden_size": 56, "intermediate_size": 112, "num_hidden_layers": 24, "num_attention_heads": 14,
             "num_key_value_heads": 2, "head_dim": 4, "tie_word_embeddings": True, "max_position_embeddings": 4096}
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VALUE_READS = ("aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero")


def sft_rows(count: int) -> list[dict]:
    """Article openings of 6 to 35 words and their topic: rows of many lengths, so batches pad."""
    from lmtune.finetune.data import load_dataset

    splits = load_dataset()
    return [{"prompt": " ".join(row["text"].split()[:6 + (7 * i) % 30]) + "\n\nTopic:",
             "response": " " + splits.label_names[row["label"]]} for i, row in enumerate(splits.train[:count])]


def build_model(vocab: int):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, **TINY_QWEN))


class Steps:
    """Called after every optimizer step: times the steps in ``timed`` and profiles the two steps after them."""

    def __init__(self, timed: tuple[int, int]):
        import torch

        self.timed, self.wall, self.cpu = timed, [], []
        self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        self.last = (0.0, 0.0)

    def __call__(self, step: int, *_) -> None:
        now = (time.perf_counter(), time.process_time())
        if self.timed[0] < step <= self.timed[1]:
            self.wall.append(now[0] - self.last[0])
            self.cpu.append(now[1] - self.last[1])
        if step == self.timed[1]:
            self.profiler.start()
        if step == self.timed[1] + 2:
            self.profiler.stop()
        self.last = (time.perf_counter(), time.process_time())

    def summary(self) -> dict:
        events = list(self.profiler.events())
        optimizer = [(e.time_range.start, e.time_range.end) for e in events if e.name.startswith("Optimizer.step")]
        reads = [e for e in events if e.name in VALUE_READS]
        in_optimizer = sum(any(a <= e.time_range.start <= b for a, b in optimizer) for e in reads)
        return {"wall_ms": 1000 * statistics.median(self.wall), "cpu_ms": 1000 * statistics.median(self.cpu),
                "aten_ops": sum(e.name.startswith("aten::") for e in events) / 2,
                "value_reads": (len(reads) - in_optimizer) / 2, "optimizer_reads": in_optimizer / 2}


def lmtune_engine(model, tokenizer, rows: list[dict], steps: int, gpu_path: bool) -> dict:
    """lmtune's loop on ``model`` with the lmtune found first on ``sys.path``."""
    from lmtune.finetune.hparams import LoraHyperparams
    from lmtune.finetune.peft_model import attach_adapter, prepare_base
    from lmtune.finetune.train import TrainingRun, TrainSettings

    hp = LoraHyperparams(rank=16, alpha=32.0, learning_rate=1e-4, batch_size=8)
    base, tokenizer = prepare_base(model, task="causal", tokenizer=tokenizer)
    peft_model = attach_adapter(base, hp, task="causal", target_modules=LINEAR)
    run = TrainingRun(peft_model, tokenizer, "causal", "eval_loss",
                      TrainSettings(max_length=64, steps=steps, eval_points=1, exact_match=False))
    if gpu_path:
        force_gpu_path(run)
    data = run.encode(rows)
    timer = Steps((5, steps - 3))
    run.fit(data, data[:8], hp, None, timer)
    return timer.summary()


def force_gpu_path(run) -> None:
    """What ``TrainingRun`` does on an accelerator, on the CPU (the code before issue 27 kept it in attributes)."""
    run.read_every = 32
    if hasattr(run, "options"):
        run.options = dataclasses.replace(run.options, mask_unpadded=False, keep_logits=True, block_mask="bool")
    else:
        from lmtune.finetune.batches import example_length

        run.keep_logits = True
        run._mask = lambda mask, examples: mask if len({example_length(x) for x in examples}) > 1 else None


def trainer_engine(model, tokenizer, rows: list[dict], steps: int, gpu_path: bool) -> dict:
    """``transformers.Trainer`` + ``peft.get_peft_model``: the same model, rows, batch, rank and schedule."""
    import tempfile

    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from lmtune.finetune.encode import encode_rows

    examples = encode_rows(rows, tokenizer, "causal", 64)
    data = [{"input_ids": x.ids, "attention_mask": [1] * len(x.ids), "labels": x.labels} for x in examples]
    peft_model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=16, lora_alpha=32,
                                                  target_modules=LINEAR))
    timer = Steps((5, steps - 3))

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            timer(state.global_step)

    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(output_dir=scratch, per_device_train_batch_size=8, max_steps=steps,
                                 learning_rate=1e-4, lr_scheduler_type="cosine", weight_decay=0.0, max_grad_norm=0.0,
                                 logging_steps=steps, save_strategy="no", report_to="none", disable_tqdm=True,
                                 use_cpu=True, seed=0, label_names=["labels"])
        Trainer(model=peft_model, args=args, train_dataset=data, callbacks=[Timer()],
                data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)).train()
    return timer.summary()


def worker(args: argparse.Namespace) -> None:
    """One engine in this process; prints its numbers as JSON."""
    import torch
    from transformers import AutoTokenizer

    from lmtune.llm import AGENT_LM_DIR

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(AGENT_LM_DIR)
    model = build_model(len(tokenizer))
    engine = trainer_engine if args.engine == "trainer" else lmtune_engine
    print(json.dumps(engine(model, tokenizer, sft_rows(8 * args.steps), args.steps, args.path == "gpu")))


def run_engine(engine: str, code: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", "--engine", engine,
                           "--steps", str(args.steps), "--path", args.path], env=env, capture_output=True, text=True,
                          timeout=1800, cwd=HERE)
    if done.returncode != 0:
        raise RuntimeError(f"{engine} ({code}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(results: dict[str, list[dict]], args: argparse.Namespace, command: str) -> str:
    keys = ("wall_ms", "cpu_ms", "aten_ops", "value_reads", "optimizer_reads")
    median = {name: {k: statistics.median(r[k] for r in runs) for k in keys} for name, runs in results.items()}
    lines = [f"`{command}` ({date.today().isoformat()}; {args.rounds} rounds, {args.path} path).", "",
             "| engine | wall ms/step | CPU ms/step | ATen ops/step | value reads/step | in the optimizer |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {m['wall_ms']:.1f} | {m['cpu_ms']:.1f} | {m['aten_ops']:,.0f} | {m['value_reads']:g} | "
              f"{m['optimizer_reads']:g} |" for name, m in median.items()]
    if "lmtune before" in median:
        before, after = median["lmtune before"], median["lmtune"]
        ratio = {k: after[k] / before[k] for k in ("cpu_ms", "wall_ms", "aten_ops")}
        lines += ["", f"lmtune after / before: CPU time per step {ratio['cpu_ms']:.2f}x, wall {ratio['wall_ms']:.2f}x, "
                      f"ATen ops {ratio['aten_ops']:.2f}x (medians of the rounds; each round ran every engine once)."]
    trainer = median.get("Trainer + PEFT")
    if trainer:
        share = median["lmtune"]["cpu_ms"] / trainer["cpu_ms"]
        lines.append(f"lmtune / Trainer + PEFT: CPU time per step {share:.2f}x.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, help="a folder with the lmtune package before the change")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--path", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--skip-trainer", action="store_true")
    parser.add_argument("--docs", type=Path, default=None, help="Markdown file whose step-overhead section is written")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="lmtune", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    engines = ([("lmtune before", "lmtune", args.before)] if args.before else []) + [("lmtune", "lmtune", HERE.parent)]
    engines += [] if args.skip_trainer else [("Trainer + PEFT", "trainer", HERE.parent)]
    results: dict[str, list[dict]] = {name: [] for name, _, _ in engines}
    for round_ in range(args.rounds):
        for name, engine, code in engines:
            results[name].append(run_engine(engine, code, args))
            print(f"round {round_ + 1} {name}: {json.dumps(results[name][-1])}", flush=True)
    body = markdown(results, args, "python benchmarks/step_overhead.py " + shlex.join(sys.argv[1:]))
    print(body)
    if args.docs:
        from _docs import write_section

        write_section(f"{SECTION}-{args.path}", body, args.docs)


if __name__ == "__main__":
    main()
