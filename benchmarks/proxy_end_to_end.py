"""End to end: which config does each proxy recipe choose, and how good is it after full training?

The default demo's search (``lmtune lora --trials 10 --max-length 64`` on BBC News, lora-small, TPE) is run as
lmtune had it (one epoch of a 10% subset, ranked by accuracy: ``today``) and with lmtune's default proxy now
(30% of each config's own full run, ranked by validation loss: ``share``), without and with successive halving
(``share+sh``), for each seed. Every recipe gets the compute of today's 10 trials: compute is counted as 3
units per training example (forward and backward) and 1 per evaluated example (forward only), all at the same
sequence length, so today's budget is 10 x (3 x 149 + 4 x 213) units; the others add trials while one more
whole trial fits in it. The chosen config is then trained on the full training split
and scored on the test split, as ``lmtune lora`` does after its search (the same settings and seed; a config
chosen twice for one seed is trained once). Each search and each final run is appended to a JSONL file as it
finishes, so the script resumes.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/proxy_end_to_end.py --seeds 0 1 2 3 4`` (results:
``benchmarks/results/proxy_end_to_end*.jsonl``, docs/benchmarks.md)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import create_trial

from lmtune import attrs
from lmtune.finetune.data import load_dataset
from lmtune.finetune.hparams import LoraHyperparams
from lmtune.finetune.scores import last_metrics, learned_nothing
from lmtune.finetune.train import TrainSettings, train_and_evaluate
from lmtune.llm import resolve_model
from lmtune.lora.config import LoraRunConfig
from lmtune.lora.search import PLAIN_EVALS, PRUNED_EVALS, proxy_plan, resolve_space
from lmtune.lora.tune import tune_lora
from lmtune.runtime.compute import trial_seconds
from lmtune.runtime.quiet import quiet_libraries
from lmtune.runtime.trials import counted_trials
from lmtune.space import config_key

RESULTS = Path("benchmarks/results/proxy_end_to_end.jsonl")
COMMON = {"max_length": 64, "space": "lora-small", "sampler": "tpe", "final_train": False}
RECIPES: dict[str, dict[str, Any]] = {
    "today": {"trials": 10, "proxy": "epochs", "proxy_fraction": 0.1, "proxy_metric": "accuracy"},
    "share": {},
    "share+sh": {"pruner": "successive-halving"},
}
TRAIN_UNITS, EVAL_UNITS = 3, 1


def units(trial: dict, validation: int) -> int:
    """Compute of one finished trial: training examples it processed and validation examples it scored."""
    return TRAIN_UNITS * trial["examples"] + EVAL_UNITS * trial["evaluations"] * validation


def whole_trial_units(recipe: dict, seed: int, splits) -> float:
    """The compute of one unpruned trial of ``recipe`` on ``splits`` (mean over the space's batch sizes)."""
    cfg = LoraRunConfig(**COMMON, **recipe, seed=seed)
    plan = proxy_plan(cfg, resolve_space(cfg), splits, TrainSettings(max_length=cfg.max_length, seed=seed))
    evals = PRUNED_EVALS if recipe.get("pruner") else PLAIN_EVALS
    return (TRAIN_UNITS * statistics.fmean(plan.steps_at(b) * b for b in plan.batch_sizes)
            + EVAL_UNITS * evals * len(splits.validation))


def search(recipe_name: str, seed: int, today_units: int, workdir: Path) -> dict[str, Any]:
    """One search of ``recipe_name``: today's 10 trials, or trials added one at a time (the study resumes)
    while one more whole trial fits in ``today_units`` (pruned trials cost less, so more of them fit)."""
    recipe = dict(RECIPES[recipe_name])
    storage, study_name = f"sqlite:///{workdir / 'e2e.db'}", f"{recipe_name}-{seed}"
    splits = load_dataset(None, seed=seed)
    validation = len(splits.validation)
    started = time.perf_counter()
    if recipe_name == "today":
        result = tune_lora(**COMMON, **recipe, seed=seed, storage=storage, study_name=study_name,
                           output_dir=workdir / study_name)
    else:
        per_trial, trials = whole_trial_units(recipe, seed, splits), 1
        while True:
            result = tune_lora(**COMMON, **recipe, trials=trials, seed=seed, storage=storage,
                               study_name=study_name, output_dir=workdir / study_name)
            spent = sum(units(t, validation) for t in trial_costs(study_name, storage, result))
            if spent + per_trial > today_units:
                break
            trials += 1
    wall = time.perf_counter() - started
    trials = trial_costs(study_name, storage, result)
    return {"kind": "search", "recipe": recipe_name, "seed": seed,
            "proxy": result.proxy, "best": result.best, "trials": trials, "spent": result.spent,
            "majority_share": result.constant_score["value"], "wall_seconds": round(wall, 1)}


def trial_costs(study_name: str, storage: str, result) -> list[dict[str, Any]]:
    """Each counted trial's config, steps, training examples, evaluations and last metrics."""
    trials = []
    for t in counted_trials(optuna.load_study(study_name=study_name, storage=storage)):
        trajectory = t.user_attrs.get(attrs.TRAJECTORY) or []
        steps, batch = t.user_attrs.get(attrs.TRAIN_STEPS, 0), t.params["batch_size"]
        examples = (steps * batch if result.proxy["steps"] or result.proxy["share"] else
                    result.proxy_examples * math.ceil(steps / max(1, math.ceil(result.proxy_examples / batch))))
        trials.append({"number": t.number, "state": t.state.name, "params": t.params, "steps": steps,
                       "examples": examples, "evaluations": len(trajectory),
                       "metrics": {k: v for k, v in last_metrics(t).items() if k in ("accuracy", "eval_loss")},
                       "seconds": round(trial_seconds(t), 1)})
    return trials


def learned_nothing_count(search: dict[str, Any]) -> int:
    """The complete trials of a search that learned nothing, by lmtune's rule (``learned_nothing``: a last accuracy
    no better than the majority-class rate) applied to each trial as its row stored it."""
    constant = {"value": search["majority_share"], "metric": "accuracy"}
    return sum(learned_nothing(constant, create_trial(value=t["metrics"]["accuracy"],
                                                      user_attrs={attrs.TRAJECTORY: [t["metrics"]]})) is not None
               for t in search["trials"] if t["state"] == "COMPLETE")


def final_run(seed: int, hyperparams: dict) -> dict[str, Any]:
    """The chosen config on the whole training split, scored on test, as ``lmtune lora``'s final retrain."""
    splits = load_dataset(None, seed=seed)
    hp = LoraHyperparams.from_params(hyperparams)
    settings = TrainSettings(max_length=COMMON["max_length"], epochs=1.0, seed=seed, eval_points=1)
    result = train_and_evaluate(hp, splits.train, splits.test, task=splits.task, model=resolve_model(None),
                                settings=settings, label_names=splits.label_names)
    return {"kind": "final", "seed": seed, "hyperparams": hyperparams, "test_accuracy": result.metric,
            "test_loss": result.eval_loss, "train_seconds": round(result.train_seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, nargs="+", default=[RESULTS],
                        help="JSONL file runs are appended to (the first); more files are read too, so that "
                        "processes running other seeds side by side can be summarized together")
    args = parser.parse_args()
    quiet_libraries()
    import torch

    torch.set_num_threads(args.threads)
    done = [json.loads(line) for path in args.output if path.exists() for line in path.read_text().splitlines()]
    searches = {(r["recipe"], r["seed"]): r for r in done if r["kind"] == "search"}
    finals = {(r["seed"], config_key(r["hyperparams"])): r for r in done if r["kind"] == "final"}
    validation = len(load_dataset(None).validation)
    today_units = RECIPES["today"]["trials"] * (TRAIN_UNITS * 149 + EVAL_UNITS * 4 * validation)

    def record(row: dict) -> None:
        with args.output[0].open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    with tempfile.TemporaryDirectory(prefix="lmtune-e2e-") as tmp:
        for seed in args.seeds:
            for name in args.recipes:
                if (name, seed) not in searches:
                    searches[(name, seed)] = row = search(name, seed, today_units, Path(tmp))
                    record(row)
                    print(f"{name} seed {seed}: {row['best']['hyperparams']} ({row['wall_seconds']:.0f} s)", flush=True)
                hyperparams = searches[(name, seed)]["best"]["hyperparams"]
                key = (seed, config_key(hyperparams))
                if key not in finals:
                    finals[key] = row = final_run(seed, hyperparams)
                    record(row)
                    print(f"  final: test accuracy {row['test_accuracy']:.4f}", flush=True)
    print_table(searches, finals, args.seeds, args.recipes, validation, today_units)


def print_table(searches, finals, seeds, recipes, validation, today_units) -> None:
    print(f"compute budget per search: {today_units} units (today's 10 trials)")
    print("| recipe | test accuracy, mean | worst seed | per seed | trials (pruned) | units spent | search s |"
          " complete trials that learned nothing |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in recipes:
        rows = [searches[(name, s)] for s in seeds if (name, s) in searches]
        accuracy = [finals[(r["seed"], config_key(r["best"]["hyperparams"]))]["test_accuracy"] for r in rows
                    if (r["seed"], config_key(r["best"]["hyperparams"])) in finals]
        if not accuracy:
            continue
        trials = [len(r["trials"]) for r in rows]
        pruned = [sum(t["state"] == "PRUNED" for t in r["trials"]) for r in rows]
        spent = [sum(units(t, validation) for t in r["trials"]) for r in rows]
        chance = [learned_nothing_count(r) for r in rows]
        print(f"| {name} | {statistics.fmean(accuracy):.4f} | {min(accuracy):.4f} | "
              f"{', '.join(f'{a:.3f}' for a in accuracy)} | {statistics.fmean(trials):.1f} "
              f"({statistics.fmean(pruned):.1f}) | {statistics.fmean(spent):.0f} | "
              f"{statistics.fmean(r['wall_seconds'] for r in rows):.0f} | {sum(chance)} of {sum(trials)} |")


if __name__ == "__main__":
    main()
