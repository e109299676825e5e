"""What each of the step's options costs or saves over a whole trial on the CPU: one LoRA trial (24 steps at batch 8,
rank 16 on all linear layers, one evaluation) of the tiny-width Qwen2 with Qwen2-0.5B's 24 layers that
``step_overhead.py`` uses, with lmtune's defaults and with one option changed, each in a process of its own,
``--rounds`` times interleaved. Reports the median CPU seconds of the trial (the machine is shared, so wall time
says more about the neighbours than about the code) and its eval loss; ``compile`` pays its compilation inside the
trial, as every trial of a study does.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/trial_options.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: lmtune's defaults, then each option changed alone.
OPTIONS = ({}, {"compile": True}, {"cross_entropy": "chunked"}, {"fused_optimizer": False}, {"scored_logits": False},
           {"packing": True}, {"max_micro_batch": 4})


def trial(changes: dict) -> dict:
    """One trial with ``changes`` to the settings, in this process."""
    import torch
    from step_overhead import LINEAR, build_model, sft_rows
    from transformers import AutoTokenizer

    from lmtune.finetune.hparams import LoraHyperparams
    from lmtune.finetune.train import TrainSettings, train_and_evaluate
    from lmtune.llm import AGENT_LM_DIR

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(AGENT_LM_DIR)
    model = build_model(len(tokenizer))
    rows = sft_rows(8 * 24 + 16)
    settings = TrainSettings(max_length=64, steps=24, eval_points=1, exact_match=False, **changes)
    hp = LoraHyperparams(rank=16, alpha=32.0, learning_rate=1e-4, batch_size=8)
    cpu, wall = time.process_time(), time.perf_counter()
    result = train_and_evaluate(hp, rows[:192], rows[192:], task="causal", model=model, tokenizer=tokenizer,
                                target_modules=LINEAR, settings=settings)
    return {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall, "eval_loss": result.eval_loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(trial(json.loads(args.worker))))
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    runs: dict[str, list[dict]] = {json.dumps(o): [] for o in OPTIONS}
    for _ in range(args.rounds):
        for key in runs:
            done = subprocess.run([sys.executable, __file__, "--worker", key], env=env, capture_output=True, text=True,
                                  cwd=HERE, check=True)
            runs[key].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(key, runs[key][-1], flush=True)
    default = statistics.median(r["cpu_s"] for r in runs[json.dumps({})])
    print("| option | trial CPU s (median) | / defaults | eval loss |\n| --- | --- | --- | --- |")
    for key, results in runs.items():
        cpu = statistics.median(r["cpu_s"] for r in results)
        print(f"| {key if key != '{}' else 'defaults'} | {cpu:.2f} | {cpu / default:.2f}x | "
              f"{results[-1]['eval_loss']:.5f} |")


if __name__ == "__main__":
    main()
