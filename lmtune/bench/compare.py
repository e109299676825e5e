"""Turn replay runs into the comparison a reader needs: regret at fixed budgets, ranks, time to the top 1%."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import multiprocessing
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

from lmtune.bench.config import AGENT_METHODS, BenchSamplersConfig
from lmtune.bench.replay import (
    Run,
    check_complete,
    check_methods,
    regret_curve,
    replay,
    search_version,
    table_source,
    trials_to_reach,
)
from lmtune.bench.table import Table
from lmtune.config import build_config, check_writable_folder
from lmtune.extras import require
from lmtune.files import write_atomic
from lmtune.runtime.quiet import quiet_libraries
from lmtune.samplers.registry import AGENT_OVERRIDE_SHARE, TRANSFER_SAMPLERS

log = logging.getLogger(__name__)

CHECKPOINTS = (5, 10, 20, 30)
TOP_FRACTION = 0.01


def summarize(table: Table, runs: list[Run], budget: int) -> dict[str, Any]:
    """Per method: mean and standard error of normalized regret and mean rank (over seeds, among the methods) at
    each checkpoint, mean rank at the budget, trials to the top 1%."""
    curves: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    reach: dict[str, list[float]] = defaultdict(list)
    seconds: dict[str, list[float]] = defaultdict(list)
    threshold = table.top_threshold(TOP_FRACTION)
    agent: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        curves[run.method][run.seed] = regret_curve(table, run.values, budget)
        if run.extra:
            agent[run.method].append(run.extra)
        reach[run.method].append(trials_to_reach(table, run.values, threshold))
        seconds[run.method].append(run.seconds)
    methods = list(curves)
    seeds = sorted(set.intersection(*(set(c) for c in curves.values())))

    def mean_ranks(trials: int) -> np.ndarray:
        regrets = np.array([[curves[m][s][trials - 1] for m in methods] for s in seeds])  # seeds x methods
        return np.array([scipy.stats.rankdata(row) for row in regrets]).mean(axis=0)

    ranks = mean_ranks(budget)
    ranks_at = {c: mean_ranks(c) for c in CHECKPOINTS if c <= budget}
    result: dict[str, Any] = {"table": table.name, "budget": budget, "seeds": len(seeds),
                              "top_threshold": threshold, "methods": {}}
    for i, method in enumerate(methods):
        stacked = np.stack([curves[method][s] for s in seeds])
        result["methods"][method] = {
            "regret": {c: _mean_se(stacked[:, c - 1]) for c in CHECKPOINTS if c <= budget},
            "mean_rank": float(ranks[i]),
            "mean_rank_at": {c: float(r[i]) for c, r in ranks_at.items()},
            "median_trials_to_top1pct": float(np.median(reach[method])),
            "reached_top1pct": int(np.isfinite(reach[method]).sum()),
            "seconds_per_run": float(np.mean(seconds[method])),
            "curve_mean": stacked.mean(axis=0).tolist(),
            "curve_se": (stacked.std(axis=0, ddof=1) / math.sqrt(len(seeds))).tolist() if len(seeds) > 1
            else [0.0] * budget,
        }
        if agent.get(method):
            result["methods"][method]["agent"] = _agent_usage(agent[method])
    return result


def _agent_usage(extras: list[dict[str, Any]]) -> dict[str, Any]:
    """The agent's usage over all its runs: fallback rate and means per suggestion (lead), or overrides and what it
    did when asked (centaur)."""
    if "overrides" in extras[0]:
        return _advisor_usage(extras)
    asked = sum(e["suggestions"] for e in extras)

    def per_suggestion(key: str) -> float:
        return sum(e[key] * e["suggestions"] for e in extras) / asked if asked else 0.0

    return {"suggestions": asked, "fell_back": sum(e["fell_back"] for e in extras),
            "fallback_rate": sum(e["fell_back"] for e in extras) / asked if asked else 0.0,
            "retries_per_suggestion": sum(e["retries"] for e in extras) / asked if asked else 0.0,
            "prompt_tokens": per_suggestion("prompt_tokens_per_suggestion"),
            "reply_tokens": per_suggestion("reply_tokens_per_suggestion"),
            "seconds": per_suggestion("seconds_per_suggestion")}


def _advisor_usage(extras: list[dict[str, Any]]) -> dict[str, Any]:
    """The agent in centaur mode over all its runs: trials, overrides, trials asked and what became of them, and means
    per trial asked."""
    asked = sum(e["asked"] for e in extras)

    def per_ask(key: str) -> float:
        return sum(e[key] * e["asked"] for e in extras) / asked if asked else 0.0

    total = {key: sum(e[key] for e in extras) for key in ("trials", "overrides", "kept", "refused", "endpoint_failed")}
    return {**total, "asked": asked, "override_share": total["overrides"] / total["trials"] if total["trials"] else 0.0,
            "prompt_tokens": per_ask("prompt_tokens_per_ask"), "reply_tokens": per_ask("reply_tokens_per_ask"),
            "seconds": per_ask("seconds_per_ask")}


def agent_markdown(summary: dict[str, Any]) -> str:
    """The agent methods' usage: suggestions asked of the model, fallback rate, rejected replies, tokens, seconds
    (lead); overrides and what the model did when asked (centaur)."""
    rows = [(m, d["agent"]) for m, d in summary["methods"].items() if "agent" in d and "overrides" not in d["agent"]]
    advisors = [(m, d["agent"]) for m, d in summary["methods"].items() if "overrides" in d.get("agent", {})]
    tables = []
    if advisors:
        lines = ["| method | trials overridden | trials asked | kept the proposal | replies refused | endpoint "
                 "failed | prompt tokens | reply tokens | s per trial asked |", "|" + " --- |" * 9]
        for method, a in advisors:
            lines.append(f"| {method} | {a['overrides']} of {a['trials']} ({a['override_share']:.0%}) | {a['asked']} | "
                         f"{a['kept']} | {a['refused']} | {a['endpoint_failed']} | {a['prompt_tokens']:.0f} | "
                         f"{a['reply_tokens']:.0f} | {a['seconds']:.2f} |")
        tables.append("\n".join(lines))
    if rows:
        tables.append(_lead_markdown(rows))
    return "\n\n".join(tables)


def _lead_markdown(rows: list[tuple[str, dict[str, Any]]]) -> str:
    lines = ["| method | suggestions asked | fell back to TPE | rejected replies per suggestion | prompt tokens | "
             "reply tokens | s per suggestion |", "|" + " --- |" * 7]
    for method, a in rows:
        lines.append(f"| {method} | {a['suggestions']} | {a['fell_back']} ({a['fallback_rate']:.0%}) | "
                     f"{a['retries_per_suggestion']:.2f} | {a['prompt_tokens']:.0f} | {a['reply_tokens']:.0f} | "
                     f"{a['seconds']:.2f} |")
    return "\n".join(lines)


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
    return float(values.mean()), se


def markdown(summary: dict[str, Any]) -> str:
    """The comparison table of one benchmark table, best mean rank first."""
    checkpoints = [c for c in CHECKPOINTS if c <= summary["budget"]]
    head = ("| method | " + " | ".join(f"regret@{c}" for c in checkpoints)
            + " | mean rank @" + "/".join(str(c) for c in checkpoints)
            + " | median trials to top 1% | reached top 1% | s per run |")
    lines = [head, "|" + " --- |" * (len(checkpoints) + 5)]
    order = sorted(summary["methods"].items(), key=lambda kv: kv[1]["mean_rank"])
    for method, m in order:
        cells = [f"{mean:.3f} ± {se:.3f}" for mean, se in (m["regret"][c] for c in checkpoints)]
        ranks = " / ".join(f"{m['mean_rank_at'][c]:.2f}" for c in checkpoints)
        median = m["median_trials_to_top1pct"]
        reach = f"{median:.0f}" if math.isfinite(median) else f"> {summary['budget']}"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {ranks} | {reach} | "
                     f"{m['reached_top1pct']}/{summary['seeds']} | {m['seconds_per_run']:.1f} |")
    return "\n".join(lines)


def plot(summaries: list[dict[str, Any]], path: Path) -> Path:
    """Best-so-far regret curves with standard-error bands, one panel per table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summaries), figsize=(6 * len(summaries), 4.5), squeeze=False)
    for ax, summary in zip(axes[0], summaries, strict=True):
        trials = np.arange(1, summary["budget"] + 1)
        for method, m in summary["methods"].items():
            mean, se = np.array(m["curve_mean"]), np.array(m["curve_se"])
            style = "-" if method.startswith("language-bo") else "--"
            ax.plot(trials, mean, style, label=method)
            ax.fill_between(trials, mean - se, mean + se, alpha=0.15)
        if min(min(m["curve_mean"]) for m in summary["methods"].values()) < 0.1:
            ax.set_yscale("symlog", linthresh=0.01)  # regrets spanning decades: show the small ones apart
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("trials")
        ax.set_ylabel("normalized regret (best so far)")
        ax.set_title(f"{summary['table']} ({summary['seeds']} seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def table_summary_markdown(tables: list[Table]) -> str:
    """One row per table: size, failures, metric range and the proxy-to-full correlation."""
    lines = ["| table | configs | failed | metric | best | worst | median | top 1% at | full runs | "
             "proxy-full Pearson | Spearman | build hours |", "|" + " --- |" * 12]
    for table in tables:
        s = table.summary()
        corr = [f"{v:.3f}" if v is not None else "n/a" for v in (s["proxy_full_pearson"], s["proxy_full_spearman"])]
        lines.append(f"| {table.name} | {s['configs']} | {s['failed']} | {s['metric']} | {s['best']:.4f} | "
                     f"{s['worst']:.4f} | {s['median']:.4f} | {s['top1pct_threshold']:.4f} | {s['full_runs']} | "
                     f"{corr[0]} | {corr[1]} | {s['train_hours']:.2f} |")
    return "\n".join(lines)


def bench_samplers(config: BenchSamplersConfig | None = None, **fields: Any) -> str:
    """``lmtune bench samplers``: load the tables and compare the methods on them (see ``compare_samplers``)."""
    cfg = config or build_config(BenchSamplersConfig, **fields)
    require("bench", "samplers", ("matplotlib", *(("PyNomad",) if "nomad" in cfg.samplers else ())))
    tables = [Table.load(path) for path in cfg.table]
    check_methods(list(cfg.samplers))
    check_writable_folder(cfg.output, "output")
    agent = None
    for method in set(cfg.samplers) & set(AGENT_METHODS):  # a bad endpoint, model or option fails before any replay
        from lmtune.samplers.registry import make_sampler

        agent = cfg.agent_options
        make_sampler("agent", space=tables[0].grid, mode=AGENT_METHODS[method], **agent)
    memory = [Table.load(path) for path in cfg.transfer_from]
    return compare_samplers(tables, list(cfg.samplers), cfg.seeds, cfg.budget, cfg.output, threads=cfg.threads,
                            jobs=cfg.jobs, agent=agent, transfer_from=memory)


def compare_samplers(tables: list[Table], methods: list[str], seeds: int, budget: int, output: Path, *,
                     threads: int = 1, jobs: int = 1, agent: dict[str, Any] | None = None,
                     transfer_from: list[Table] = ()) -> str:
    """Replay every method on every table; write runs.jsonl (resumable), samplers.md/.json and samplers.png.

    Runs already in ``output/runs.jsonl`` for the same table, method, seed and budget (and, for methods that
    transfer, the same memory) are reused, so an interrupted comparison continues where it stopped. ``jobs`` > 1
    replays in that many processes; a replay depends only on its seed, so the report is the same. ``agent`` holds
    the agent sampler's options; its runs are labelled ``agent:<model> (centaur <share>)`` and
    ``agent-lead:<model>``, so runs of different models, modes and shares are kept apart. Methods that transfer
    (``TRANSFER_SAMPLERS``) remember every other table of the run and every ``transfer_from`` table that searches
    a compatible space, never the table they search (leave one out). Returns the Markdown report.
    """
    check_methods(methods)
    for table in tables:
        check_complete(table)
    output.mkdir(parents=True, exist_ok=True)
    runs_log = output / "runs.jsonl"
    done = _read_log(runs_log)
    fingerprints = {table.name: table.fingerprint() for table in tables}
    memory = _memories(tables, list(transfer_from)) if set(methods) & set(TRANSFER_SAMPLERS) else {}

    def label(method: str) -> str:
        return agent_label(method, agent or {}) if method in AGENT_METHODS else method

    def key(table: Table, method: str, seed: int) -> tuple:
        prior = "+".join(m.name + ":" + fp for m, fp in memory[table.name]) if method in TRANSFER_SAMPLERS else ""
        return table.name, fingerprints[table.name], label(method), seed, budget, prior, search_version(method)

    def sources(table: Table, method: str) -> tuple:
        return tuple(table_source(m) for m, _ in memory[table.name]) if method in TRANSFER_SAMPLERS else ()

    pending = [(table, method, seed, sources(table, method)) for table in tables for method in methods
               for seed in range(seeds) if key(table, method, seed) not in done]
    for table, run in _replay_all(pending, budget, threads, jobs, agent):
        done[key(table, run.method, run.seed)] = run
        run.method = label(run.method)
        with runs_log.open("a") as f:
            record = dict(zip(_LOG_KEY, key(table, run.method, run.seed), strict=True))
            extra = {"extra": run.extra} if run.extra else {}
            f.write(json.dumps({**record, "values": run.values, "seconds": run.seconds, **extra}) + "\n")
        final = regret_curve(table, run.values, budget)[-1]
        log.info("%s %s seed %d: regret %.3f after %d trials (%.1f s)", table.name, run.method, run.seed, final,
                 budget, run.seconds)
    summaries, sections = [], [table_summary_markdown(tables)]
    if memory:
        sections.append("Memory of the methods that transfer (" + ", ".join(TRANSFER_SAMPLERS) + "): "
                        + "; ".join(f"{name} remembers {', '.join(m.name for m, _ in kept) or 'nothing'}"
                                    for name, kept in memory.items()) + ".")
    for table in tables:
        runs = [done[key(table, method, seed)] for method in methods for seed in range(seeds)]
        summary = summarize(table, runs, budget)
        summaries.append(summary)
        usage = agent_markdown(summary)
        sections.append(f"### {table.name}\n\n{markdown(summary)}" + (f"\n\n{usage}" if usage else ""))
    report = "\n\n".join(sections) + "\n"
    write_atomic(output / "samplers.md", report)
    write_atomic(output / "samplers.json", json.dumps(summaries, indent=1) + "\n")
    plot(summaries, output / "samplers.png")
    return report


def agent_label(method: str, agent: dict[str, Any]) -> str:
    """An agent method's name in runs.jsonl and the report: its model, and in centaur mode the override share."""
    if AGENT_METHODS[method] == "lead":
        return f"{method}:{agent.get('model')}"
    return f"{method}:{agent.get('model')} (centaur {agent.get('override_share', AGENT_OVERRIDE_SHARE):g})"


#: What identifies a replay in runs.jsonl; a changed table (fingerprint), budget, memory or search is replayed again.
#: ``prior`` (the tables a transferring method remembers) is empty for the other methods and in older logs;
#: ``search`` (``replay.search_version``) is empty for the methods whose search has not changed and in older logs.
_LOG_KEY = ("table", "fingerprint", "method", "seed", "budget", "prior", "search")


def _read_log(log: Path) -> dict[tuple, Run]:
    done: dict[tuple, Run] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            r = json.loads(line)
            done[tuple(r.get(field, "") for field in _LOG_KEY)] = Run(r["method"], r["seed"], r["values"],
                                                                      r["seconds"], r.get("extra"))
    return done


def _memories(tables: list[Table], extra: list[Table]) -> dict[str, list[tuple[Table, str]]]:
    """Per searched table: the other tables of the run and the extra ones whose searched space is compatible with
    its own (``transfer.space_differences``, the rule of ``lmtune lora``'s memory), with their fingerprints; never a
    table with the searched table's rows (the same file given twice, or under another name). A table with no
    compatible one remembers nothing."""
    from lmtune.samplers.language_bo.transfer import space_differences  # torch: only when a method transfers

    everything = {t.fingerprint(): t for t in [*tables, *extra]}
    memory = {}
    for table in tables:
        own = table.fingerprint()
        memory[table.name] = [(t, fp) for fp, t in everything.items()
                              if fp != own and not space_differences(t.grid, table.grid)]
    return memory


def _replay_all(pending: list[tuple[Table, str, int, tuple]], budget: int, threads: int, jobs: int,
                agent: dict[str, Any] | None = None) -> Iterator[tuple[Table, Run]]:
    """Yield each finished replay as soon as it is done; with ``jobs`` > 1 the slowest methods start first."""
    if jobs <= 1:
        for table, method, seed, sources in pending:
            yield table, replay(table, method, seed, budget, threads=threads, agent=agent, sources=sources)
        return
    pending = sorted(pending, key=lambda item: not item[1].startswith("language-bo"))  # stable: seeds keep order
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch state shared through fork
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, initializer=quiet_libraries) as pool:
        futures = {pool.submit(replay, table, method, seed, budget, threads=threads, agent=agent, sources=sources):
                   table for table, method, seed, sources in pending}
        try:
            for future in concurrent.futures.as_completed(futures):
                yield futures[future], future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
