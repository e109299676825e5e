"""Does a longer proxy predict the full run better? Train a table's full-run configs for more proxy epochs.

A table's rows are its proxy runs (``epochs`` of the recipe on the seeded proxy subset) and its
``full`` entries are the same configs trained on the whole training split. This trains those configs
again on the same proxy subset for each ``--epochs`` value, with everything else of the recipe kept,
and prints the Pearson and Spearman correlation with the full runs next to the table's own proxy and
the time each proxy costs. Results: ``benchmarks/results/proxy_epochs-<table>.json``.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/proxy_epochs.py --table benchmarks/data/bbc-minilm.json.gz
--epochs 3``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import optuna

from lmtune.bench.build import training_setup
from lmtune.bench.specs import load_table_spec
from lmtune.bench.table import Table
from lmtune.correlation import correlate
from lmtune.errors import TrialFailed
from lmtune.finetune.objective import LoraObjective
from lmtune.runtime.quiet import quiet_libraries


def train_proxies(table: Table, rows: list[dict], epochs: float, threads: int) -> tuple[list[float | None], float]:
    """The proxy metric of each row's config after ``epochs`` epochs, and the seconds it all took."""
    spec = dataclasses.replace(load_table_spec(table.name), epochs=epochs)
    setup = training_setup(spec, threads)
    objective = LoraObjective(spec.grid, setup.splits, model=setup.model, proxy_fraction=spec.proxy_fraction,
                              settings=setup.settings, seed=spec.seed)
    study = optuna.create_study(direction=setup.direction)
    for row in rows:
        study.enqueue_trial(row["params"])
    started = time.perf_counter()
    study.optimize(objective, n_trials=len(rows), catch=(TrialFailed,))
    return [t.value for t in study.trials], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, required=True)
    parser.add_argument("--epochs", type=float, nargs="+", default=[3.0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    quiet_libraries()
    table = Table.load(args.table)
    rows = [r for r in table.rows if "full" in r]
    full = [r["full"]["metric"] for r in rows]
    recipe_epochs = table.recipe["epochs"]
    results = [{"epochs": recipe_epochs, "source": "table rows", "pearson": None, "spearman": None,
                "seconds": sum(r["train_seconds"] for r in rows), "proxy": [r["metric"] for r in rows]}]
    for epochs in args.epochs:
        proxy, seconds = train_proxies(table, rows, epochs, args.threads)
        results.append({"epochs": epochs, "source": "trained here", "seconds": seconds, "proxy": proxy})
    for result in results:
        result.update(correlate(result["proxy"], full))
    print(f"{table.name}: {len(rows)} configs with a full-split run "
          f"(full runs took {sum(r['full']['train_seconds'] for r in rows) / 60:.1f} min)")
    print("| proxy epochs | source | Pearson with full | Spearman with full | proxy minutes |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        pearson, spearman = ("n/a" if r[k] is None else f"{r[k]:.3f}" for k in ("pearson", "spearman"))
        print(f"| {r['epochs']:g} | {r['source']} | {pearson} | {spearman} | {r['seconds'] / 60:.1f} |")
    output = Path("benchmarks/results") / f"proxy_epochs-{table.name}.json"
    output.write_text(json.dumps({"table": table.name, "full": full, "params": [r["params"] for r in rows],
                                  "results": results}, indent=1) + "\n")
    print(f"written: {output}")


if __name__ == "__main__":
    main()
