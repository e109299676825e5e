"""How `--sampler auto` was chosen: leave one table out over the committed replay tables (issue 29).

    bash benchmarks/auto_design.sh            # the design runs: 5 seeds, the candidate plans, memory off and on
    PYTHONPATH=. .venv/bin/python benchmarks/auto_design.py --runs benchmarks/results/auto-design/runs.jsonl \
        --table benchmarks/data/*.json.gz

`auto` runs one plan without memory and one with memory (earlier studies or tables whose space matches). A run
with memory is marked by its `prior` in runs.jsonl (the tables it remembered); the same method replayed on a table
alone has none. For every table in turn, each choice is made on the other tables alone (the lowest mean regret
over the budgets 5, 10, 20 and 30 and over those tables; regret as `lmtune bench samplers` reports it) and scored
on the table left out, so the held-out column is what the rule would have done on a table it never saw. The final
rule is the choice on all tables; the table says which candidate each fold chose, so a reader sees how stable it
is. The criterion was fixed before the design runs; the final comparison (20 seeds, docs/benchmarks.md) came after.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from lmtune.bench.replay import regret_curve
from lmtune.bench.table import Table

CHECKPOINTS = (5, 10, 20, 30)


def regrets(runs: Path, tables: dict[str, Table], budget: int) -> dict[tuple[str, str], np.ndarray]:
    """(table, method) -> seeds x checkpoints regret, over the seeds every method of that table has; a run with
    memory is the method's name with " (memory)"."""
    by_key: dict[tuple[str, str], dict[int, np.ndarray]] = defaultdict(dict)
    for line in runs.read_text().splitlines():
        run = json.loads(line)
        table = tables.get(run["table"])
        if table is None or run["budget"] != budget or run["fingerprint"] != table.fingerprint():
            continue
        curve = regret_curve(table, run["values"], budget)
        label = run["method"] + (" (memory)" if run.get("prior") else "")
        by_key[run["table"], label][run["seed"]] = np.array([curve[c - 1] for c in CHECKPOINTS])
    out = {}
    for name in tables:
        methods = {m: seeds for (t, m), seeds in by_key.items() if t == name}
        if not methods:
            continue
        common = sorted(set.intersection(*(set(s) for s in methods.values())))
        out.update({(name, m): np.array([s[seed] for seed in common]) for m, s in methods.items()})
    return out


def choose(candidates: list[str], tables: list[str], found: dict[tuple[str, str], np.ndarray]) -> str:
    """The candidate of lowest mean regret over these tables and every checkpoint (ties: the first listed)."""
    scores = {c: np.mean([found[t, c].mean() for t in tables]) for c in candidates if all((t, c) in found
                                                                                      for t in tables)}
    return min(scores, key=scores.get)


def leave_one_out(candidates: list[str], baselines: list[str], names: list[str],
                  found: dict[tuple[str, str], np.ndarray]) -> list[str]:
    """Markdown rows: per held-out table, the choice made on the others, its regret there and the baselines'."""
    rows = []
    for held in names:
        others = [t for t in names if t != held]
        chosen = choose(candidates, others, found)
        cells = [_cell(found[held, chosen])] + [_cell(found[held, b]) for b in baselines]
        rows.append(f"| {held} | `{chosen}` | " + " | ".join(cells) + " |")
    return rows


def _cell(matrix: np.ndarray) -> str:
    mean, se = matrix.mean(0), matrix.std(0, ddof=1) / np.sqrt(len(matrix)) if len(matrix) > 1 else 0 * matrix[0]
    return " / ".join(f"{m:.3f}±{s:.3f}" for m, s in zip(mean, se, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--table", type=Path, nargs="+", required=True)
    parser.add_argument("--budget", type=int, default=30)
    parser.add_argument("--plain", nargs="+", help="candidates without memory",
                        default=["gp", "tpe", "language-bo+", "auto-memory-then-gp-5", "auto-memory-then-gp-10"])
    parser.add_argument("--memory", nargs="+", help="candidates with memory (their runs with a prior)",
                        default=["language-bo+ (memory)", "language-bo+whole-gate (memory)",
                                 "auto-memory-then-gp-5 (memory)", "auto-memory-then-gp-10 (memory)"])
    parser.add_argument("--baselines", nargs="+", default=["gp", "tpe"])
    args = parser.parse_args()
    tables = {t.name: t for t in map(Table.load, args.table)}
    found = regrets(args.runs, tables, args.budget)
    names = [n for n in tables if all((n, c) in found for c in args.plain)]
    with_memory = [n for n in names if all((n, c) in found for c in args.memory)]
    header = ("| held-out table | chosen on the others | held-out regret @5/10/20/30 | "
              + " | ".join(args.baselines) + " |\n|" + " --- |" * (3 + len(args.baselines)))
    print("### Without memory\n\n" + header)
    print("\n".join(leave_one_out(args.plain, args.baselines, names, found)))
    print(f"\nChosen on all {len(names)} tables: `{choose(args.plain, names, found)}`\n")
    print("### With memory of the other tables\n\n" + header)
    print("\n".join(leave_one_out(args.memory + args.plain, args.baselines, with_memory, found)))
    print(f"\nChosen on all {len(with_memory)} tables: `{choose(args.memory + args.plain, with_memory, found)}`")


if __name__ == "__main__":
    main()
