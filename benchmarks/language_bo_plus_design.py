"""How every setting of ``language-bo+`` was chosen: on synthetic LoRA landscapes, never on a real table.

The real tables (benchmarks/data) are the final test, so no choice may look at them. This script draws
synthetic tasks from a family built on the LoRA guidance of ``language_bo_synthetic.py`` (a band of workable
effective step sizes lr · (alpha/r)^a / batch^b with a divergence cliff above it, rank capacity with
overfitting unless dropout, a cost of too much dropout, a batch preference, noise), each on its own random
sub-grid of the lora-paper pool (800-2,000 configs), reported as an accuracy or as a loss with a plateau.
Each target task comes with a *related* source (parameters perturbed, another sub-grid, maybe the other metric)
and a *misleading* one (its good band moved by 1.5 decades).

Experiments:

* ``surrogate``: Spearman correlation between the posterior mean and the true score over all unobserved configs,
  after 10, 20 and 30 random observations, for each surrogate variant.
* ``replay``: searches of 30 trials, as ``lmtune bench samplers`` replays them (same lookups, the same Optuna
  baselines on integer-coded variables), normalized regret at 5/10/20/30 trials and mean rank.

Run: ``HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python benchmarks/language_bo_plus_design.py surrogate``, or, for
the replay behind ``transfer_design=2`` (results/plus-design/replay-1.md; its methods in replay-1.methods.json):
``... language_bo_plus_design.py replay --tasks 4 --seeds 3 --tag=-1 --methods "$(cat
benchmarks/results/plus-design/replay-1.methods.json)"``
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import optuna
import scipy.stats
import torch

from lmtune.bench.replay import regret_curve, replay, table_source
from lmtune.bench.table import Table
from lmtune.samplers.language_bo.plus import LanguageBOPlusSampler
from lmtune.space import Ordered, SearchSpace, load_space

PAPER = load_space("lora-paper")
RESULTS = Path(__file__).resolve().parent / "results" / "plus-design"
CHECKPOINTS = (5, 10, 20, 30)


# -- the task family ------------------------------------------------------------------------------------------

def draw_task(rng: np.random.Generator) -> dict:
    return {
        "step_opt": rng.uniform(-3.6, -2.2), "a": rng.uniform(0.6, 1.0), "b": rng.uniform(0.0, 1.0),
        "width": rng.uniform(0.3, 0.8), "cliff": rng.uniform(0.8, 1.6), "cap": rng.uniform(0.03, 0.2),
        "r0": float(rng.choice([2, 8, 32])), "overfit": rng.uniform(0.0, 0.08),
        "overfit_rank": float(rng.choice([8, 32, 64])),
        "drop_ok": rng.uniform(0.05, 0.2), "drop_cost": rng.uniform(0.5, 3.0), "batch_pref": rng.uniform(-0.04, 0.04),
        "noise": rng.uniform(0.003, 0.02), "metric": str(rng.choice(["accuracy", "loss"])), "power": rng.uniform(1, 3),
    }


def related(task: dict, rng: np.random.Generator) -> dict:
    out = dict(task)
    out["step_opt"] += rng.normal(0, 0.35)
    out["b"] = float(np.clip(out["b"] + rng.normal(0, 0.2), 0, 1))
    for key in ("width", "cap", "overfit", "drop_cost", "noise"):
        out[key] *= math.exp(rng.normal(0, 0.3))
    out["batch_pref"] += rng.normal(0, 0.02)
    out["metric"] = str(rng.choice(["accuracy", "loss"]))
    return out


def misleading(task: dict) -> dict:
    return {**task, "step_opt": task["step_opt"] + (1.5 if task["step_opt"] < -2.9 else -1.5)}


def score(task: dict, c: dict) -> float:
    """Noise-free quality in [0, 1]-ish of config ``c`` under ``task``."""
    u = (math.log10(c["learning_rate"]) + task["a"] * math.log10(c["alpha_ratio"])
         - 0.5 * task["b"] * math.log10(c["batch_size"] / 16))
    if u > task["step_opt"] + task["cliff"]:
        return 0.0
    step = math.exp(-(((u - task["step_opt"]) / task["width"]) ** 2))
    capacity = task["cap"] * (1 - math.exp(-c["rank"] / task["r0"]))
    overfit = task["overfit"] * max(0.0, math.log2(c["rank"] / task["overfit_rank"])) * \
        max(0.0, task["drop_ok"] - c["dropout"]) / task["drop_ok"]
    too_much = task["drop_cost"] * max(0.0, c["dropout"] - task["drop_ok"]) ** 2
    batch = task["batch_pref"] * math.log2(c["batch_size"] / 16)
    return float(np.clip(0.1 + 0.6 * step + capacity - overfit - too_much + batch, 0.0, 1.0))


def random_grid(rng: np.random.Generator, name: str) -> SearchSpace:
    def pick(param: str, low: int, high: int, keep_zero: bool = False) -> tuple:
        values = PAPER.param(param).values()
        count = int(rng.integers(low, high + 1))
        chosen = set(rng.choice(len(values), count, replace=False).tolist())
        if keep_zero:
            chosen.add(0)
        return tuple(values[i] for i in sorted(chosen))

    while True:
        grid = SearchSpace((Ordered("rank", pick("rank", 4, 6), log=True),
                            Ordered("alpha_ratio", pick("alpha_ratio", 4, 6), log=True),
                            Ordered("batch_size", pick("batch_size", 3, 5), log=True),
                            Ordered("learning_rate", pick("learning_rate", 4, 6), log=True),
                            Ordered("dropout", pick("dropout", 1, 2, keep_zero=True))), {"variant": "lora"}, name)
        if 600 <= grid.pool_size <= 2400:
            return grid


def make_table(task: dict, grid: SearchSpace, name: str, seed: int) -> Table:
    rng = np.random.default_rng(seed)
    rows = []
    for config in grid.iter_pool():
        s = score(task, config) + rng.normal(0, task["noise"])
        metric = 0.2 + 0.7 * s if task["metric"] == "accuracy" else 7.4 - 5.3 * max(s, 0.0) ** task["power"]
        rows.append({"params": {k: v for k, v in config.items() if k not in grid.fixed}, "state": "COMPLETE",
                     "metric": float(metric), "true": score(task, config)})
    recipe = {"grid": grid.to_dict(), "dataset": f"synthetic-{name}", "model": "arith-lm",
              "task": "causal" if task["metric"] == "loss" else None}
    metric_name = "eval_loss" if task["metric"] == "loss" else "accuracy"
    return Table(name=name, recipe=recipe, metric_name=metric_name,
                 direction="minimize" if task["metric"] == "loss" else "maximize", rows=rows)


def suite(count: int, seed: int = 2024) -> list[dict]:
    """``count`` target tables, each with a related and a misleading source table."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        task = draw_task(rng)
        out.append({
            "target": make_table(task, random_grid(rng, f"t{k}"), f"t{k}", seed + k),
            "related": make_table(related(task, rng), random_grid(rng, f"t{k}-related"), f"t{k}-related",
                                  seed + 100 + k),
            "misleading": make_table(misleading(task), random_grid(rng, f"t{k}-misleading"), f"t{k}-misleading",
                                     seed + 200 + k),
        })
    return out


# -- experiments -----------------------------------------------------------------------------------------------

VARIANTS: dict[str, dict] = {
    # the numbers alone: the reference the sum must never fall below
    "numbers": {"numeric": True, "text": False},
    # numbers + text, the text kernel kept only while it predicts left-out configs better (surrogate.py)
    "sum-psi": {"numeric": True},
    "sum-projection": {"numeric": True, "use_learnable_token": False},
    "sum-projection-iso": {"numeric": True, "use_learnable_token": False, "text_ard": False},
    "sum-fixed-embedding": {"numeric": True, "use_learnable_token": False, "use_projection": False,
                            "text_ard": False},
    # the paper's text-only surrogate
    "text": {"numeric": False, "lbfgs": False},
}


def surrogate_experiment(tasks: list[dict], variants: list[str], sizes=(10, 30), repeats: int = 1) -> dict:
    out: dict[str, dict[int, list[float]]] = {v: {n: [] for n in sizes} for v in variants}
    text_kept: dict[str, list[bool]] = {v: [] for v in variants}
    for entry in tasks:
        table = entry["target"]
        truth = np.array([r["true"] for r in table.rows])
        sign = 1.0 if table.direction == "maximize" else -1.0
        metric = np.array([r["metric"] for r in table.rows]) * sign
        for rep in range(repeats):
            rng = np.random.default_rng([rep, len(table.rows)])
            order = rng.permutation(len(truth))
            for n in sizes:
                observed = order[:n].tolist()
                raw = metric[observed]
                y = torch.tensor((raw - raw.mean()) / (raw.std() or 1.0))
                rest = order[n:]
                for variant in variants:
                    sampler = LanguageBOPlusSampler(table.grid, seed=rep, start="random", **VARIANTS[variant])
                    sampler.prepare()
                    model = sampler.surrogate
                    with torch.random.fork_rng():
                        torch.manual_seed(rep)
                        model.fit(observed, y, sampler.mll_steps, lr_gp=0.2, lr_features=0.002, decay=0.95)
                    mean = model.mean(rest.tolist()).numpy()
                    rho = scipy.stats.spearmanr(mean, truth[rest]).statistic
                    out[variant][n].append(float(rho))
                    if model.last_loo:
                        text_kept[variant].append(model.uses_text)
            print(f"{table.name} repeat {rep}: " + ", ".join(
                f"{v} {np.mean(out[v][sizes[-1]][-1:]):.2f}" for v in variants), flush=True)
    summary = {v: {n: [float(np.mean(r)), float(np.std(r, ddof=1) / math.sqrt(len(r)))] for n, r in d.items()}
               for v, d in out.items()}
    for v, kept in text_kept.items():
        if kept:
            summary[v]["text_kept"] = float(np.mean(kept))
    return summary


def plus_run(table: Table, options: dict, seed: int, budget: int, sources=()) -> list[float | None]:
    sampler = LanguageBOPlusSampler(table.grid, seed=seed, n_startup_trials=5, transfer=sources,
                                    description=_description(table), **options)
    study = optuna.create_study(sampler=sampler, direction=table.direction)
    values: list[float | None] = []

    def objective(trial):
        value = table.lookup(table.grid.suggest(trial))["metric"]
        values.append(value)
        return value

    study.optimize(objective, n_trials=budget)
    return values


def _description(table: Table) -> str:
    from lmtune.bench.replay import table_description

    return table_description(table)


def replay_experiment(tasks: list[dict], methods: dict[str, dict | None], seeds: int, budget: int = 30,
                      log: Path | None = None) -> dict:
    done = {}
    if log and log.exists():
        for line in log.read_text().splitlines():
            r = json.loads(line)
            done[(r["table"], r["method"], r["seed"])] = r["values"]
    curves: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    for entry in tasks:
        table = entry["target"]
        for method, options in methods.items():
            for seed in range(seeds):
                key = (table.name, method, seed)
                if key not in done:
                    started = time.perf_counter()
                    if options is None:
                        values = replay(table, method, seed, budget).values
                    else:
                        options = dict(options)
                        source = options.pop("source", None)
                        sources = (table_source(entry[source]),) if source else ()
                        values = plus_run(table, options, seed, budget, sources)
                    done[key] = values
                    if log:
                        with log.open("a") as f:
                            f.write(json.dumps({"table": table.name, "method": method, "seed": seed,
                                                "values": values}) + "\n")
                    print(f"{table.name} {method} seed {seed}: {regret_curve(table, values, budget)[-1]:.3f} "
                          f"({time.perf_counter() - started:.1f} s)", flush=True)
                curves[method].append(regret_curve(table, done[key], budget))
    names = list(methods)
    stacked = np.array([curves[m] for m in names])  # methods x runs x budget
    summary = {}
    for i, m in enumerate(names):
        summary[m] = {}
        for c in CHECKPOINTS:
            ranks = np.array([scipy.stats.rankdata(stacked[:, r, c - 1]) for r in range(stacked.shape[1])])
            regrets = stacked[i, :, c - 1]
            summary[m][c] = {"regret": float(regrets.mean()),
                             "se": float(regrets.std(ddof=1) / math.sqrt(len(regrets))),
                             "rank": float(ranks[:, i].mean())}
    return summary


def print_replay(summary: dict) -> str:
    lines = ["| method | " + " | ".join(f"regret@{c}" for c in CHECKPOINTS) + " | " +
             " | ".join(f"rank@{c}" for c in CHECKPOINTS) + " |", "|" + " --- |" * (2 * len(CHECKPOINTS) + 1)]
    for m, s in sorted(summary.items(), key=lambda kv: kv[1][30]["rank"]):
        lines.append(f"| {m} | " + " | ".join(f"{s[c]['regret']:.3f} ± {s[c]['se']:.3f}" for c in CHECKPOINTS) + " | "
                     + " | ".join(f"{s[c]['rank']:.2f}" for c in CHECKPOINTS) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("experiment", choices=["surrogate", "replay"])
    parser.add_argument("--tasks", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--methods", default="", help="replay: JSON object name -> options (null: a registry name)")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    RESULTS.mkdir(parents=True, exist_ok=True)
    tasks = suite(args.tasks)
    if args.experiment == "surrogate":
        result = surrogate_experiment(tasks, args.variants)
        for v, d in result.items():
            print(f"| {v} | " + " | ".join(f"{m:.3f} ± {se:.3f}" for n, (m, se) in d.items() if n != "text_kept")
                  + f" | {d.get('text_kept', '')} |")
        (RESULTS / f"surrogate{args.tag}.json").write_text(json.dumps(result, indent=1))
    else:
        methods = json.loads(args.methods)
        summary = replay_experiment(tasks, methods, args.seeds, log=RESULTS / f"replay{args.tag}.jsonl")
        text = print_replay(summary)
        print(text)
        (RESULTS / f"replay{args.tag}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
