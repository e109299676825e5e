"""Pruning vs no pruning at equal optimization budget on the committed arithmetic model, and FLAML's BlendSearch
side by side.

    PYTHONPATH=. .venv/bin/python benchmarks/infer_pruning.py --seeds 5
    PYTHONPATH=. .venv/bin/python benchmarks/infer_pruning.py --seeds 5 --flaml-python /tmp/flaml-venv/bin/python

For each seed both lmtune modes run the same workload (task arith-add3, 200 problems, 120 tuning / 80 test,
temperature 0..2, max_tokens 2..32, n 1..32, inference budget 0.02, optimization budget 12, no response cache
so every response is paid for). FLAML (``pip install 'flaml[blendsearch]'`` in its own venv: it pins optuna 3.6)
runs BlendSearch with its cost budget against ``lmtune serve`` on 127.0.0.1 (benchmarks/infer_flaml_blendsearch.py);
its chosen config is then tested here on the same test split. Writes benchmarks/results/infer_pruning.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import optuna

from lmtune.inference.config import InferConfig
from lmtune.inference.tuner import tune_inference
from lmtune.llm.local import LocalGenerator

WORKLOAD = dict(task="arith-add3", task_size=200, test_fraction=0.4, inference_budget=0.02, optimization_budget=12.0,
                max_tokens=(2, 32), n=(1, 32), temperature=(0.0, 2.0), cache="none", test_pareto=False)


def lmtune_run(generator, seed: int, pruning: bool) -> dict:
    start = time.time()
    with tempfile.TemporaryDirectory() as folder:
        config = InferConfig(models=["arith-lm"], seed=seed, pruning=pruning, output_dir=None,
                             storage=f"sqlite:///{folder}/infer.db", **WORKLOAD)
        r = tune_inference(config, generator=generator).to_dict()
    best = r["best"] or {}
    return {"seed": seed, "pruning": pruning, "spend": r["spend"]["real"],
            "configs_evaluated": r["configs_scored"] + r["configs_over_budget_measured"]
            + r["configs_pruned_by_knowledge"], "configs_scored": r["configs_scored"],
            "over_budget_measured": r["configs_over_budget_measured"],
            "pruned_by_knowledge": r["configs_pruned_by_knowledge"],
            "best_tuning": best.get("tuning", {}).get("quality"), "best_test": best.get("test", {}).get("quality"),
            "best_cost": best.get("tuning", {}).get("cost_per_instance"), "best_config": best.get("config"),
            "seconds": time.time() - start}


def flaml_run(python: str, url: str, data: Path, seed: int) -> dict:
    prices = {"price-in": 0.5, "price-out": 1.0}  # arith-lm in lmtune/inference/prices.yaml
    command = [python, str(Path(__file__).with_name("infer_flaml_blendsearch.py")), "--url", url, "--data", str(data),
               "--seed", str(seed), "--inference-budget", str(WORKLOAD["inference_budget"]),
               "--optimization-budget", str(WORKLOAD["optimization_budget"]), "--n-max", str(WORKLOAD["n"][1]),
               "--max-tokens", *map(str, WORKLOAD["max_tokens"])] + [f"--{k}={v}" for k, v in prices.items()]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_quality(generator, config: dict, seed: int) -> tuple[float, float]:
    """Success and cost per instance of a config on the seed's test split (lmtune's evaluator, no pruning)."""
    from lmtune.inference.evaluate import Evaluator
    from lmtune.inference.metrics import make_instance_metric
    from lmtune.inference.prices import PriceTable
    from lmtune.inference.space import InferencePoint
    from lmtune.inference.spend import MeteredGenerator, SpendLedger
    from lmtune.inference.tasks import load_infer_task
    from lmtune.llm.cache import CachedGenerator
    from lmtune.llm.generation import BackgroundLoop

    task = load_infer_task("arith-add3", size=WORKLOAD["task_size"], seed=seed)
    _, test = task.split(WORKLOAD["test_fraction"], seed)
    metric, needs = make_instance_metric("success")
    loop = BackgroundLoop()
    metered = MeteredGenerator(CachedGenerator(generator, None), PriceTable.load(), SpendLedger(None))
    tester = Evaluator(task, test, metric, needs, metered, loop, float("inf"),
                       pruning=False, seed=seed, salt="test")
    result = tester.evaluate(InferencePoint("arith-lm", 0, 0, config["max_tokens"], config["n"],
                                            temperature=config["temperature"]))
    loop.close()
    return result.quality, result.cost_per_instance


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--flaml-python", default=None, help="python of a venv with flaml[blendsearch]")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    generator = LocalGenerator("arith-lm")
    rows = []
    for seed in range(args.seeds):
        for pruning in (True, False):
            rows.append(lmtune_run(generator, seed, pruning))
            print(json.dumps(rows[-1]), flush=True)
    flaml_rows = []
    if args.flaml_python:
        from tests.test_infer_parts import Server

        from lmtune.inference.tasks import load_infer_task
        from lmtune.llm.server import make_app

        with Server(make_app(generator)) as url, tempfile.TemporaryDirectory() as folder:
            for seed in range(args.seeds):
                task = load_infer_task("arith-add3", size=WORKLOAD["task_size"], seed=seed)
                tuning, _ = task.split(WORKLOAD["test_fraction"], seed)
                data = Path(folder) / f"tuning-{seed}.json"
                data.write_text(json.dumps(tuning))
                row = flaml_run(args.flaml_python, url, data, seed)
                if row["best"]:
                    row["best_test"], row["best_test_cost"] = test_quality(generator, row["best"]["config"], seed)
                flaml_rows.append(row)
                print(json.dumps(row), flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "infer_pruning.json").write_text(json.dumps({"workload": WORKLOAD, "lmtune": rows,
                                                                "flaml": flaml_rows}, indent=2, default=list))
    table = summarize(rows, flaml_rows)
    (args.output / "infer_pruning.md").write_text(table)
    print(table)


def summarize(rows, flaml_rows) -> str:
    budget, limit = WORKLOAD["optimization_budget"], WORKLOAD["inference_budget"]

    def mean_sd(values):
        values = [v for v in values if v is not None]
        if not values:
            return "n/a"
        return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else \
            f"{values[0]:.3f}"

    lines = ["| method | configs evaluated | configs scored | best test success | best tuning success | "
             "max spend / budget | best meets per-instance budget |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for pruning in (True, False):
        sel = [r for r in rows if r["pruning"] == pruning]
        lines.append(f"| lmtune, {'pruning' if pruning else 'no pruning'} | "
                     f"{mean_sd([r['configs_evaluated'] for r in sel])} | {mean_sd([r['configs_scored'] for r in sel])}"
                     f" | {mean_sd([r['best_test'] for r in sel])} | {mean_sd([r['best_tuning'] for r in sel])} | "
                     f"{max(r['spend'] for r in sel) / budget:.4f} | "
                     f"{all(r['best_cost'] is not None and r['best_cost'] <= limit for r in sel)} |")
    if flaml_rows:
        lines.append(f"| FLAML BlendSearch (cost budget) | {mean_sd([r['evaluated'] for r in flaml_rows])} | "
                     f"{mean_sd([r['evaluated'] - r['scored_zero_over_budget'] for r in flaml_rows])} | "
                     f"{mean_sd([r.get('best_test') for r in flaml_rows])} | "
                     f"{mean_sd([(r['best'] or {}).get('success') for r in flaml_rows])} | "
                     f"{max(r['spend'] for r in flaml_rows) / budget:.4f} | "
                     f"{all(r['best'] is not None for r in flaml_rows)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
