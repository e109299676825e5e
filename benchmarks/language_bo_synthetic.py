"""Language-BO vs random, TPE and GP on a synthetic LoRA objective over the 45,360-config lora-paper pool.

The objective has known structure, built from the LoRA guidance the domain template states:

* an effective step size u = log10(lr * alpha/r / sqrt(batch/16)) (LoRA scales its update by
  alpha/r = alpha_ratio; square-root batch scaling) must sit in a band around 1e-3; far above it
  training diverges (a cliff), below it training is too slow;
* rank adds capacity with diminishing returns, but ranks above 32 overfit unless dropout is ~0.15;
* dropout above 0.15 costs a little; small batches are slightly better;
* plus Gaussian noise (sd 0.01), seeded per (seed, trial).

Reported per method and budget, over seeds: mean best-so-far observed value, and the normalized
regret of the best config found so far, (f* - max_i f(x_i)) / (f* - median f) with f noise-free,
so 0 is the pool's optimum and 1 is a median config.

Run: ``HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python benchmarks/language_bo_synthetic.py --seeds 10``
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import time
from datetime import date

import numpy as np
import optuna
import torch
from _docs import write_section

from lmtune.samplers import LanguageBOSampler
from lmtune.samplers.registry import make_sampler
from lmtune.space import load_space

SPACE = load_space("lora-paper")
BEST_STEP = -3.0  # log10 of the best effective step size
METHODS = ("language-bo", "random", "tpe", "gp")
#: The rows of seed Table 6 below the full method: none, +projection, +domain prompt (no learnable token).
ABLATIONS = {
    "lbo-none": {"template": "plain", "use_projection": False, "use_learnable_token": False},
    "lbo-proj": {"template": "plain", "use_learnable_token": False},
    "lbo-proj-domain": {"use_learnable_token": False},
}


def true_score(c: dict) -> float:
    """Noise-free synthetic 'accuracy' of a LoRA config (see the module docstring)."""
    rank, batch, dropout = c["rank"], c["batch_size"], c["dropout"]
    u = math.log10(c["learning_rate"] * c["alpha_ratio"] / math.sqrt(batch / 16))
    step = -0.4 if u > BEST_STEP + 1.3 else math.exp(-(((u - BEST_STEP) / 0.45) ** 2))
    capacity = 0.12 * (1 - math.exp(-rank / 16))
    overfit = 0.04 * max(0.0, math.log2(rank) - 5) * max(0.0, 0.15 - dropout) / 0.15
    too_much_dropout = 2.0 * max(0.0, dropout - 0.15) ** 2
    return 0.25 + 0.55 * step + capacity - overfit - too_much_dropout - 0.03 * math.log2(batch) / 8


def objective(seed: int):
    def run(trial: optuna.Trial) -> float:
        config = SPACE.suggest(trial)
        noise = np.random.default_rng([seed, trial.number]).normal(0.0, 0.01)
        trial.set_user_attr("true", true_score(config))
        return true_score(config) + noise
    return run


def sampler_for(method: str, seed: int, cache_dir: str | None):
    if method == "language-bo" or method in ABLATIONS:
        return LanguageBOSampler(SPACE, seed=seed, cache_dir=cache_dir, **ABLATIONS.get(method, {}))
    return make_sampler(method, space=SPACE, seed=seed, n_startup_trials=5)  # as lmtune lora builds it


def run_method(method: str, seeds: int, trials: int, cache_dir: str | None) -> dict:
    observed, true, seconds = [], [], []
    for seed in range(seeds):
        study = optuna.create_study(direction="maximize", sampler=sampler_for(method, seed, cache_dir))
        started = time.perf_counter()
        study.optimize(objective(seed), n_trials=trials)
        seconds.append(time.perf_counter() - started)
        observed.append(np.maximum.accumulate([t.value for t in study.trials]))
        true.append(np.maximum.accumulate([t.user_attrs["true"] for t in study.trials]))
        print(f"{method} seed {seed}: best {observed[-1][-1]:.4f} ({seconds[-1]:.0f} s)", flush=True)
    return {"observed": np.array(observed), "true": np.array(true), "seconds": np.array(seconds)}


def table(results: dict, budgets: tuple[int, ...], f_best: float, f_median: float) -> str:
    head = "| method | " + " | ".join(f"best-so-far @{b} | regret @{b}" for b in budgets) + " | s per run |"
    rows = [head, "|" + " --- |" * (2 * len(budgets) + 2)]
    for method, r in results.items():
        cells = []
        for b in budgets:
            best = r["observed"][:, b - 1]
            regret = (f_best - r["true"][:, b - 1]) / (f_best - f_median)
            cells += [f"{best.mean():.4f} ± {best.std(ddof=1) / math.sqrt(len(best)):.4f}",
                      f"{regret.mean():.3f} ± {regret.std(ddof=1) / math.sqrt(len(regret)):.3f}"]
        rows.append(f"| {method} | " + " | ".join(cells) + f" | {r['seconds'].mean():.1f} |")
    return "\n".join(rows)


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average at the end {load}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=[*METHODS, *ABLATIONS],
                        help="lbo-* are the ablation rows of seed Table 6")
    parser.add_argument("--cache-dir", default=None, help="embedding cache (default: lmtune's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-docs", action="store_true", help="print only; do not write docs/benchmarks.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    pool = np.array([true_score(c) for c in SPACE.iter_pool()])
    f_best, f_median = float(pool.max()), float(np.median(pool))
    budgets = tuple(b for b in (10, args.trials) if b <= args.trials)
    results = {m: run_method(m, args.seeds, args.trials, args.cache_dir) for m in args.methods}
    command = "HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python benchmarks/language_bo_synthetic.py " + \
        shlex.join(sys.argv[1:])
    ablations = "; lbo-*: the ablation rows of seed Table 6 (none = plain template, no projection, no " \
        "learnable token; proj = plain + projection; proj-domain = domain template + projection, no token)" \
        if set(args.methods) & set(ABLATIONS) else ""
    body = (
        "## Language-BO on a synthetic LoRA objective\n\n"
        f"`{command.strip()}` ({date.today()}; {machine()}).\n\n"
        f"Pool: lora-paper, {len(pool):,} configs; f* = {f_best:.4f}, median f = {f_median:.4f}, "
        f"{(pool > f_best - 0.02).sum()} configs within 0.02 of f*. {args.seeds} seeds x {args.trials} trials per "
        "method; mean ± standard error over seeds. Best-so-far: highest observed (noisy) value; regret: "
        "(f* - f(best config so far)) / (f* - median f), noise-free. language-bo: `LanguageBOSampler` defaults "
        "(MiniLM, domain template, 5 random trials); random, tpe, gp: `lmtune.samplers.registry.make_sampler(name, "
        "space=SPACE, n_startup_trials=5)` (Optuna RandomSampler, TPESampler, GPSampler on the ordered parameters' "
        "indexes, never repeating a config)" + ablations + ". The objective is "
        "described in the script's docstring.\n\n" + table(results, budgets, f_best, f_median)
    )
    print(body)
    if not args.no_docs:
        write_section("language_bo_synthetic", body)


if __name__ == "__main__":
    main()
