"""Does a proxy sized by optimizer steps track the full run? Proxy rules against full-split runs of a table.

A benchmark table's rows hold full-split runs (``full``) of some configs. This trains the same configs again
under each proxy rule and prints, per rule and per proxy metric (the task metric, and the validation loss),
the Pearson and Spearman correlation with the full runs and the proxy's cost as a share of a full run
(training examples processed, and measured seconds). Every run is appended to a JSONL file as it finishes,
so the script resumes where it stopped.

Two config sets, so that a rule can be chosen on data that the reported numbers do not use:

* ``--configs full``: the table's own full-run configs (30 for bbc-minilm and arith-sft), whose full runs are
  stored in the table. This is the measurement docs/benchmarks.md reports.
* ``--configs design``: ``--design-count`` other configs of the same grid, spread over the table's proxy ranks
  the way the full-run configs were chosen, but none of them; their full runs are trained here first.

A rule is ``table`` (the table's own proxy runs, ``--configs full`` only; nothing is trained), ``steps=N`` (N
optimizer steps for every config), ``auto`` (lmtune's default proxy for the grid and the data, planned by
``lmtune.finetune.proxy.plan_proxy``), ``share=R`` (R times the config's own full-run steps, on the subset
a fixed-steps proxy of that length would draw from) or ``epochs=E`` (E passes over the proxy subset, the
recipe of the tables), with ``fraction=F`` (the share of the training split the proxy draws from; ``auto``:
lmtune's default) and ``evals=K`` (evaluations along the run; default 4).

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/proxy_steps.py --table benchmarks/data/bbc-minilm.json.gz
--configs full --rule auto``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from lmtune.bench.build import training_setup
from lmtune.bench.specs import load_table_spec
from lmtune.bench.table import Table
from lmtune.correlation import correlate, finished_pairs
from lmtune.errors import TrialFailed
from lmtune.finetune.data import proxy_subset
from lmtune.finetune.hparams import LoraHyperparams
from lmtune.finetune.proxy import ShareProxy, StepsProxy, plan_proxy
from lmtune.finetune.train import TrainSettings, train_and_evaluate
from lmtune.runtime.quiet import quiet_libraries
from lmtune.space import config_key

RESULTS = Path("benchmarks/results")


def design_configs(table: Table, count: int) -> list[dict[str, Any]]:
    """``count`` completed configs without a full run, spread evenly over the proxy ranks (offset by half a
    step from where the full-run configs were taken)."""
    rows = sorted((r for r in table.rows if r["metric"] is not None and "full" not in r), key=lambda r: r["metric"])
    positions = np.unique(np.round(np.linspace(0, len(rows) - 1, count + 1)[:-1]
                                   + (len(rows) - 1) / count / 2).astype(int))
    configs = [dict(rows[i]["params"]) for i in positions]
    return [configs[i] for i in spread_order(len(configs))]


def spread_order(count: int) -> list[int]:
    """0..count-1 in bit-reversed order, so that any prefix is spread over the whole range."""
    bits = max(1, (count - 1).bit_length())
    order = sorted(range(2 ** bits), key=lambda i: int(format(i, f"0{bits}b")[::-1], 2))
    return [i for i in order if i < count]


def parse_rule(text: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"evals": 4, "fraction": "auto"}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key == "auto":
            rule["auto"] = True
            continue
        if key not in ("steps", "share", "epochs", "fraction", "evals"):
            raise SystemExit(f"unknown rule part {part!r}")
        if key == "steps" and value == "auto":
            raise SystemExit("steps=auto was lmtune's first default, 32 steps on both tables: write steps=32")
        rule[key] = value if value == "auto" else (int(value) if key in ("steps", "evals") else float(value))
    if sum(k in rule for k in ("steps", "share", "epochs", "auto")) != 1:
        raise SystemExit(f"rule {text!r} needs exactly one of auto, steps=, share=, epochs=")
    return rule


class Runs:
    """The JSONL file of finished runs, keyed by (kind, rule, config)."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[tuple, dict] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                row = json.loads(line)
                self.rows[(row["kind"], row["rule"], config_key(row["params"]))] = row

    def get(self, kind: str, rule: str, params: dict) -> dict | None:
        return self.rows.get((kind, rule, config_key(params)))

    def add(self, row: dict) -> None:
        self.rows[(row["kind"], row["rule"], config_key(row["params"]))] = row
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


class Bench:
    def __init__(self, table: Table, threads: int):
        self.table = table
        self.spec = load_table_spec(table.name)
        self.setup = training_setup(self.spec, threads)
        self.fixed = self.spec.grid.fixed

    def run(self, params: dict, rows: list[dict], settings: TrainSettings) -> dict[str, Any]:
        hp = LoraHyperparams.from_params({**params, **self.fixed})
        splits = self.setup.splits
        started = time.perf_counter()
        try:
            result = train_and_evaluate(hp, rows, splits.validation, task=splits.task, model=self.setup.model,
                                        label_names=splits.label_names, settings=settings)
        except TrialFailed as error:
            return {"metric": None, "eval_loss": None, "fail_reason": str(error),
                    "seconds": time.perf_counter() - started}
        return {"metric": result.metric, "eval_loss": result.eval_loss, "trajectory": result.trajectory,
                "steps": result.steps, "examples_seen": result.steps * hp.batch_size,
                "seconds": time.perf_counter() - started}

    def full_run(self, params: dict) -> dict[str, Any]:
        settings = dataclasses.replace(self.setup.settings)
        return self.run(params, self.setup.splits.train, settings)

    def proxy_settings(self, rule: dict, params: dict) -> tuple[TrainSettings, list[dict]]:
        base = self.setup.settings
        train = self.setup.splits.train
        batch = params["batch_size"]
        if "epochs" in rule:
            settings = dataclasses.replace(base, epochs=rule["epochs"], eval_points=rule["evals"])
            fraction = self.spec.proxy_fraction if rule["fraction"] == "auto" else rule["fraction"]
            return settings, proxy_subset(train, fraction, self.spec.seed)
        fraction = None if rule["fraction"] == "auto" else rule["fraction"]
        if "auto" in rule:  # lmtune's default proxy, planned as lmtune lora plans it
            plan = plan_proxy(len(train), self.spec.grid, epochs=base.epochs, fraction=fraction)
            steps = plan.trial_steps(batch)
            settings = dataclasses.replace(base, steps=steps, eval_points=min(rule["evals"], steps))
            return settings, proxy_subset(train, plan.fraction, self.spec.seed)
        if "share" in rule:  # the steps of lmtune's share proxy, on the rows a fixed-steps proxy that long draws from
            share = plan_proxy(len(train), self.spec.grid, ShareProxy(share=rule["share"]), epochs=base.epochs,
                               min_steps=base.min_steps)
            steps = share.steps_at(batch)
        else:
            steps = rule["steps"]
        plan = plan_proxy(len(train), self.spec.grid, StepsProxy(steps=steps), epochs=base.epochs, fraction=fraction)
        settings = dataclasses.replace(base, steps=plan.steps, eval_points=min(rule["evals"], plan.steps))
        return settings, proxy_subset(train, plan.fraction, self.spec.seed)


def correlations(proxy: list[float | None], full: list[float | None]) -> tuple[float, float, int]:
    """Pearson, Spearman (nan where lmtune's ``correlate`` finds too few pairs) and the number of pairs."""
    found = correlate(proxy, full)
    return (*(math.nan if found[k] is None else found[k] for k in ("pearson", "spearman")),
            len(finished_pairs(proxy, full)))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, required=True)
    parser.add_argument("--configs", choices=("full", "design"), default="full")
    parser.add_argument("--design-count", type=int, default=20)
    parser.add_argument("--proxies-only", action="store_true", help="design: train no full run here")
    parser.add_argument("--limit", type=int, default=None, help="design: only the first N configs of the spread order")
    parser.add_argument("--rule", nargs="+", default=["auto"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--full-only", action="store_true", help="train the design configs' full runs and stop")
    parser.add_argument("--no-train", action="store_true", help="train nothing: print the table over the configs "
                        "that every trained rule has finished (n says how many)")
    parser.add_argument("--shard", default="0/1", help="i/n: train only every n-th config from the i-th (several "
                        "processes on one results file; run once more without it to print the table)")
    args = parser.parse_args()
    args.shard, args.shards = map(int, args.shard.split("/"))
    return args


def mine(args: argparse.Namespace, i: int) -> bool:
    """Whether this process trains the ``i``-th config (from 1) of a list: its shard, and training is on."""
    return (i - 1) % args.shards == args.shard and not args.no_train


def full_runs(args: argparse.Namespace, bench: Bench, runs: Runs) -> tuple[list[dict], dict[str, dict]]:
    """The configs and the full run of each (by config key): the table's own, or design configs trained here."""
    table = bench.table
    if args.configs == "full":
        configs = [dict(r["params"]) for r in table.rows if "full" in r]
        return configs, {config_key(r["params"]): r["full"] for r in table.rows if "full" in r}
    configs = design_configs(table, args.design_count)[:args.limit]
    full = {}
    for i, params in enumerate(configs, 1):
        row = runs.get("full", "full", params)
        if row is None and (not mine(args, i) or args.proxies_only):
            continue
        if row is None:
            row = {"kind": "full", "rule": "full", "params": params, **bench.full_run(params)}
            runs.add(row)
            print(f"full {i}/{len(configs)}: {row['metric']} {row['seconds']:.0f} s {params}", flush=True)
        full[config_key(params)] = row
    return configs, full


def proxy_runs(args: argparse.Namespace, text: str, configs: list[dict], bench: Bench, runs: Runs) -> list[dict]:
    """The finished proxy runs of rule ``text`` (training this process's share of the missing ones)."""
    if text == "table":  # the table's own proxy runs (its recipe: one epoch of its proxy fraction), no training
        rows = [bench.table.lookup(p) for p in configs]
        examples = round(bench.spec.proxy_fraction * len(bench.setup.splits.train)) * bench.spec.epochs
        return [{"params": p, "metric": r["metric"], "eval_loss": r.get("eval_loss"), "examples_seen": examples,
                 "seconds": r["train_seconds"]} for p, r in zip(configs, rows, strict=True)]
    rule, done = parse_rule(text), []
    for i, params in enumerate(configs, 1):
        row = runs.get("proxy", text, params)
        if row is None and not mine(args, i):
            continue
        if row is None:
            settings, rows = bench.proxy_settings(rule, params)
            row = {"kind": "proxy", "rule": text, "params": params, "rows": len(rows),
                   **bench.run(params, rows, settings)}
            runs.add(row)
            print(f"{text} {i}/{len(configs)}: {row['metric']} {row['seconds']:.0f} s {params}", flush=True)
        done.append(row)
    return done


def rule_lines(text: str, done: list[dict], full: dict[str, dict], bench: Bench) -> list[str]:
    """The table's lines of one rule: each proxy metric's correlation with the full runs, and the proxy's cost."""
    table = bench.table
    sign = 1.0 if table.direction == "maximize" else -1.0
    full_examples = len(bench.setup.splits.train) * bench.setup.settings.epochs
    shares = [r.get("examples_seen", 0) / full_examples for r in done]
    seconds = sum(r["seconds"] for r in done)
    done_full = [full[config_key(r["params"])] for r in done]
    full_done_seconds = sum(f.get("seconds", f.get("train_seconds")) for f in done_full)
    candidates = [(table.metric_name, [r["metric"] for r in done])]
    if table.metric_name != "eval_loss":  # the validation loss next to the task metric (ranked: lower is better)
        candidates.append(("eval_loss", [None if r["eval_loss"] is None else -sign * r["eval_loss"] for r in done]))
    lines = []
    for metric, values in candidates:
        pearson, spearman, n = correlations(values, [f.get("metric") for f in done_full])
        lines.append(f"| {text} | {metric} | {pearson:.3f} | {spearman:.3f} | {n} | {np.mean(shares):.1%} "
                     f"(max {max(shares):.0%}) | {seconds / full_done_seconds:.1%} | {seconds / 60:.1f} |")
    return lines


def main() -> None:
    args = parse_args()
    quiet_libraries()
    table = Table.load(args.table)
    bench = Bench(table, args.threads)
    runs = Runs(RESULTS / f"proxy_steps-{table.name}-{args.configs}.jsonl")
    configs, full = full_runs(args, bench, runs)
    if args.configs == "design" and args.full_only:
        return
    if args.shards > 1 or len(full) < len(configs):
        print(f"{len(full)} of {len(configs)} full runs so far")
    full_seconds = [f.get("seconds", f.get("train_seconds")) for f in full.values()]
    print(f"{table.name}, {args.configs} configs: {len(configs)}; full runs {sum(full_seconds) / 60:.1f} min")
    lines = ["| rule | metric | Pearson | Spearman | n | examples share | seconds share | proxy min |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    if args.no_train:  # compare rules on the same configs: those that every trained rule has finished
        configs = [p for p in configs if all(runs.get("proxy", t, p) for t in args.rule if t != "table")]
    for text in args.rule:
        done = proxy_runs(args, text, configs, bench, runs)
        if args.shards == 1 and done:
            lines += rule_lines(text, done, full, bench)
    if args.shards == 1:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
