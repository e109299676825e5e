"""The whole ``lmtune hag`` study on the offline tasks, one command per step, as a user would run them.

    # the tables in docs/benchmarks.md (about 30 minutes on 2 shared cores)
    PYTHONPATH=. .venv/bin/python benchmarks/hag.py --tasks hag-mix hag-spread --evaluate-on validation test \
        --task-size 300 --task-seed 2 --output benchmarks/results/hag-31

Steps, for each task (each resumes, so a rerun after a stop finishes the work and pays for nothing twice):

1. ``lmtune hag label`` on the train and validation splits (and test when asked), one process per split.
2. ``lmtune hag global`` on the training labels: lmtune infer's search for one config for all inputs, with the
   task's metric and n, at the generation budget the training labels cost.
3. ``lmtune hag train`` for each learner (LoRA adapter = HAG, head, neighbours) and seed, with the global config
   and the validation labels (the guard's calibration).
4. ``lmtune hag evaluate`` on each split asked for, in order. Writes ``OUTPUT/<task>/summary-<split>.json`` and
   prints the table.

Every setting (grids, search, learners, seeds) is a default fixed before any evaluation ran, by the validation
splits of earlier runs (docs/decisions.md); ``--evaluate-on validation`` gives a table that never sees the test
inputs. ``--device cuda`` runs the model on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

LEARNERS = ("adapter", "head", "neighbours")


def spawn(command: list[str], log: Path) -> subprocess.Popen:
    """One lmtune command in the background, niced on one thread, its output appended to a log file."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with log.open("a") as handle:
        handle.write(f"$ lmtune {' '.join(command)}\n")
    return subprocess.Popen(["nice", "-n", "10", sys.executable, "-m", "lmtune.cli", *command], env=env,
                            stdout=log.open("a"), stderr=subprocess.STDOUT)


def run_all(jobs: list[tuple[str, list[str], Path]]) -> None:
    """Run commands side by side; stop on the first that fails."""
    running = [(name, spawn(command, log), log) for name, command, log in jobs]
    for name, process, log in running:
        if process.wait() != 0:
            sys.exit(f"{name} failed; see {log}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["hag-mix", "hag-spread"])
    parser.add_argument("--evaluate-on", choices=["validation", "test"], nargs="+", required=True)
    parser.add_argument("--model", default="hag-lm")
    parser.add_argument("--task-size", type=int, default=300, help="instances per task (50%% train, 20%% "
                        "validation, 30%% test)")
    parser.add_argument("--task-seed", type=int, default=0, help="seed of the instances and their split")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/hag"))
    return parser.parse_args()


def label_jobs(out: Path, args: argparse.Namespace, task: str) -> list[tuple[str, list[str], Path]]:
    """1. ``lmtune hag label`` on every split needed."""
    splits = ["train", "validation"] + (["test"] if "test" in args.evaluate_on else [])
    return [(f"labelling {task} {split}",
             ["hag", "label", "--model", args.model, "--task", task, "--n", "8", "--max-tokens", "16", "--seed",
              str(args.task_seed), "--task-size", str(args.task_size), "--split", split, "--storage",
              f"sqlite:///{out}/label-{split}.db", "--output-dir", str(out), "--cache",
              str(out / f"responses-{split}.sqlite"), "--device", args.device], out / "logs" / f"label-{split}.log")
            for split in splits if not (out / f"label-{split}.json").is_file()]


def global_job(out: Path, args: argparse.Namespace, task: str) -> list[tuple[str, list[str], Path]]:
    """2. ``lmtune hag global`` at the training labels' generation budget."""
    if (out / "global" / "results.json").is_file():
        return []
    return [(f"lmtune hag global on {task}",
             ["hag", "global", "--labels", str(out / "labels-train.jsonl"), "--max-trials", "1000", "--storage",
              f"sqlite:///{out}/global.db", "--output-dir", str(out / "global"), "--device", args.device],
             out / "logs" / "global.log")]


def train_jobs(out: Path, args: argparse.Namespace) -> tuple[list[str], list[tuple[str, list[str], Path]]]:
    """3. Every (learner, seed), with the global config and the validation labels; their folders."""
    folders, jobs = [], []
    for learner in LEARNERS:
        for seed in range(args.seeds):
            folder = out / f"{learner}-seed{seed}"
            folders.append(str(folder))
            if (folder / "hag.json").is_file():
                continue  # trained by an earlier run
            jobs.append((f"training {folder}",
                         ["hag", "train", "--labels", str(out / "labels-train.jsonl"), "--output", str(folder),
                          "--learner", learner, "--global-config", str(out / "global" / "results.json"),
                          "--validation-labels", str(out / "labels-validation.jsonl"), "--cache",
                          str(out / "responses-guard.sqlite"), "--seed", str(seed), "--device", args.device],
                         out / "logs" / f"train-{learner}-seed{seed}.log"))
    return folders, jobs


def evaluate(out: Path, args: argparse.Namespace, folders: list[str], split: str, timings: dict) -> str:
    """4. ``lmtune hag evaluate`` of every method on one split; its summary file, and the table."""
    started = time.time()
    run_all([(f"evaluating {out.name} {split}",
              ["hag", "evaluate", "--labels", str(out / f"labels-{split}.jsonl"), "--learners", ",".join(folders),
               "--global-config", str(out / "global" / "results.json"), "--output-dir", str(out / f"eval-{split}"),
               "--cache", str(out / f"responses-eval-{split}.sqlite"), "--device", args.device],
              out / "logs" / f"evaluate-{split}.log")])
    timings[f"evaluate_{split}"] = time.time() - started
    evaluation = json.loads((out / f"eval-{split}" / "evaluation.json").read_text())
    found = json.loads((out / "global" / "results.json").read_text())
    budget = json.loads((out / "label-train.json").read_text())["budget"]
    summary = {"task": out.name, "split": split, "task_size": args.task_size, "task_seed": args.task_seed,
               "device": args.device, "label_budget_train": budget, "global_spend_tokens": found["spend"]["real"] * 1e6,
               "global_trials": found["trials"], "global_config": found["best"]["config"], "wall_seconds": timings,
               "evaluation": evaluation}
    from lmtune.files import write_atomic

    write_atomic(out / f"summary-{split}.json", json.dumps(summary, indent=2) + "\n")
    return evaluation["table"]


def main() -> None:
    args = parse_args()
    outs = {task: args.output / task for task in args.tasks}
    for out in outs.values():
        (out / "logs").mkdir(parents=True, exist_ok=True)
    timings: dict[str, dict[str, float]] = {task: {} for task in args.tasks}
    steps = [("labels", lambda task, out: label_jobs(out, args, task)),
             ("global", lambda task, out: global_job(out, args, task))]
    for step, jobs_of in steps:  # every task's step side by side
        started = time.time()
        run_all([job for task, out in outs.items() for job in jobs_of(task, out)])
        for task in args.tasks:
            timings[task][step] = time.time() - started
    for task, out in outs.items():  # the learners of one task side by side, tasks in turn
        started = time.time()
        folders, jobs = train_jobs(out, args)
        run_all(jobs)
        timings[task]["train_learners"] = time.time() - started
        for split in args.evaluate_on:
            print(f"## {task}, {split}\n\n{evaluate(out, args, folders, split, timings[task])}")
    print(f"wall seconds: {json.dumps(timings)}")


if __name__ == "__main__":
    main()
