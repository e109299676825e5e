"""The whole ``lmtune hag`` study on the offline hag-mix task, one command per step, as a user would run them.

    # the table in docs/benchmarks.md (about 10 minutes on 2 shared cores)
    PYTHONPATH=. .venv/bin/python benchmarks/hag.py --evaluate-on validation test --task-size 300 --task-seed 1 \
        --output benchmarks/results/hag-final
    # the first, smaller run whose validation split chose the learners' settings (benchmarks/results/hag)
    PYTHONPATH=. .venv/bin/python benchmarks/hag.py --evaluate-on test --task-size 120

Steps (each resumes, so a rerun after a stop finishes the work and pays for nothing twice):

1. ``lmtune hag label`` on the train and validation splits (and test when asked), one process per split.
2. ``lmtune infer`` on the train split with the same generation budget as the train labels cost (tokens priced
   at $0.001 per 1K, so dollars = tokens / 10^6), searching temperature, top_p, top_k and repetition_penalty
   with the task's own metric (``lmtune.hag.task:mix_metric``) and n fixed: the best single task-level config.
3. ``lmtune hag train`` for each learner (LoRA adapter = HAG, predictor head) and seed, with lmtune infer's
   config as the fallback.
4. ``lmtune hag evaluate`` on each split asked for, in order. Writes ``OUTPUT/summary-<split>.json`` and prints
   the table.

Every setting (grids, search, learners, seeds) is a default fixed before any evaluation ran; the validation
labels only report how well each learner agrees with them (``logs/train-*.log``), and ``--evaluate-on
validation`` gives a table that never sees the test inputs. ``--device cuda`` runs the model on a GPU (labels,
lmtune infer, learners, evaluation).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TASK = ["--task", "hag-mix", "--n", "8", "--max-tokens", "16"]
GRID = {"temperature": "0,0.25,0.5,0.75,1,1.25,1.5,1.75,2", "top_p": "0.5,0.7,0.8,0.9,0.95,1",
        "top_k": "2,4,8,16,32,0", "repetition_penalty": "1,1.1,1.2,1.35,1.5,1.75,2"}


def lmtune(*args: str, log: Path) -> None:
    """Run one lmtune command niced on one thread, its output to a log file; stop on failure."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with log.open("a") as handle:
        handle.write(f"$ lmtune {' '.join(args)}\n")
        handle.flush()
        code = subprocess.call(["nice", "-n", "10", sys.executable, "-m", "lmtune.cli", *args], env=env,
                               stdout=handle, stderr=subprocess.STDOUT)
    if code != 0:
        sys.exit(f"lmtune {' '.join(args[:2])} failed ({code}); see {log}")


def spawn(command: list[str], log: Path) -> subprocess.Popen:
    """One lmtune command in the background, niced on one thread, its output appended to a log file."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(["nice", "-n", "10", sys.executable, "-m", "lmtune.cli", *command], env=env,
                            stdout=log.open("a"), stderr=subprocess.STDOUT)


def write(path: Path, text: str) -> None:
    from lmtune.files import write_atomic

    write_atomic(path, text)


def label(out: Path, args, split: str) -> list[str]:
    return ["hag", "label", "--model", args.model, *TASK, "--seed", str(args.task_seed), "--task-size",
            str(args.task_size), "--split", split,
            "--storage", f"sqlite:///{out}/label-{split}.db", "--output-dir", str(out), "--cache",
            str(out / f"responses-{split}.sqlite"), "--device", args.device]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluate-on", choices=["validation", "test"], nargs="+", required=True)
    parser.add_argument("--model", default="hag-lm")
    parser.add_argument("--task-size", type=int, default=300, help="hag-mix instances (50%% train, 20%% validation, "
                        "30%% test)")
    parser.add_argument("--task-seed", type=int, default=0, help="seed of the hag-mix instances and their split")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/hag"))
    return parser.parse_args()


def label_splits(out: Path, args: argparse.Namespace, logs: Path) -> None:
    """1. ``lmtune hag label`` on every split needed, one process per split."""
    splits = ["train", "validation"] + (["test"] if "test" in args.evaluate_on else [])
    jobs = []
    for split in splits:
        log = logs / f"label-{split}.log"
        log.open("a").write(f"$ lmtune {' '.join(label(out, args, split))}\n")
        jobs.append((split, spawn(label(out, args, split), log)))
    for split, job in jobs:
        if job.wait() != 0:
            sys.exit(f"labelling {split} failed; see {logs / f'label-{split}.log'}")


def best_task_config(out: Path, args: argparse.Namespace, logs: Path, tokens: int) -> None:
    """2. The best task-level config by ``lmtune infer`` at the train labels' generation budget."""
    rows = [json.loads(line) for line in (out / "labels-train.jsonl").read_text().splitlines()[1:]]
    write(out / "train-task.jsonl", "".join(json.dumps(r["instance"]) + "\n" for r in rows))
    write(out / "prices.yaml", f"{Path(args.model).name}: {{input: 0.001, output: 0.001}}\n")
    if not (out / "infer" / "results.json").is_file():
        lmtune("infer", "--local-model", args.model, "--task", str(out / "train-task.jsonl"), "--metric",
               "lmtune.hag.task:mix_metric", "--n", "8,8", "--max-tokens", "16,16", "--sampling", "both",
               "--temperature", "0,2", "--top-p", "0.5,1", "--top-k", GRID["top_k"], "--repetition-penalty", "1,2",
               "--prices", str(out / "prices.yaml"), "--inference-budget", "1", "--optimization-budget",
               f"{tokens / 1e6:.6f}", "--test-fraction", "0.1", "--max-trials", "1000", "--seed", "0",
               "--device", args.device, "--storage", f"sqlite:///{out}/infer.db", "--output-dir", str(out / "infer"),
               log=logs / "infer.log")


def train_learners(out: Path, args: argparse.Namespace, logs: Path) -> list[str]:
    """3. Every (learner, seed) in its own process, with lmtune infer's config as the fallback; their folders."""
    learners, jobs = [], []
    for learner in ("adapter", "head"):
        for seed in range(args.seeds):
            folder = out / f"{learner}-seed{seed}"
            learners.append(str(folder))
            if (folder / "hag.json").is_file():
                continue  # trained by an earlier run
            command = ["hag", "train", "--labels", str(out / "labels-train.jsonl"), "--output", str(folder),
                       "--learner", learner, "--fallback", str(out / "infer" / "results.json"),
                       "--validation-labels", str(out / "labels-validation.jsonl"), "--seed", str(seed),
                       "--device", args.device]
            log = logs / f"train-{learner}-seed{seed}.log"
            write(log, f"$ lmtune {' '.join(command)}\n")
            jobs.append((folder, spawn(command, log)))
    for folder, job in jobs:
        if job.wait() != 0:
            sys.exit(f"training {folder.name} failed; see {logs}")
    return learners


def main() -> None:
    args = parse_args()
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    started = time.time()
    timings: dict[str, float] = {}
    label_splits(out, args, logs)
    timings["labels"] = time.time() - started
    budget = json.loads((out / "label-train.json").read_text())["budget"]
    tokens = budget["prompt_tokens"] + budget["completion_tokens"]
    step = time.time()
    best_task_config(out, args, logs, tokens)
    timings["infer"] = time.time() - step
    step = time.time()
    learners = train_learners(out, args, logs)
    timings["train_learners"] = time.time() - step

    # 4. evaluation, split by split
    infer = json.loads((out / "infer" / "results.json").read_text())
    for split in args.evaluate_on:
        step = time.time()
        lmtune("hag", "evaluate", "--labels", str(out / f"labels-{split}.jsonl"), "--learners", ",".join(learners),
               "--global-config", str(out / "infer" / "results.json"), "--output-dir", str(out / f"eval-{split}"),
               "--cache", str(out / f"responses-eval-{split}.sqlite"), "--device", args.device,
               log=logs / f"evaluate-{split}.log")
        timings[f"evaluate_{split}"] = time.time() - step
        evaluation = json.loads((out / f"eval-{split}" / "evaluation.json").read_text())
        summary = {"split": split, "task_size": args.task_size, "device": args.device,
                   "label_budget_train": budget, "infer_spend_tokens": infer["spend"]["real"] * 1e6,
                   "infer_trials": infer["trials"], "global_config": infer["best"]["config"],
                   "wall_seconds": timings, "evaluation": evaluation}
        write(out / f"summary-{split}.json", json.dumps(summary, indent=2) + "\n")
        print(f"## {split}\n\n{evaluation['table']}")
    print(f"label budget (train): {budget}")
    print(f"lmtune infer spent {infer['spend']['real'] * 1e6:.0f} tokens of {tokens}; trials {infer['trials']}")
    print(f"wall seconds: {timings}")


if __name__ == "__main__":
    main()
