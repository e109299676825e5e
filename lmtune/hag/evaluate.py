"""``lmtune hag evaluate``: per-input decoding against one decoding for all, on held-out inputs.

Every method gives each held-out input a config; each config is scored on ``repeats`` fresh seeded requests of
n responses (seeds that the label search never used, so the oracle's own selection noise does not flatter it).
Methods: the API default decoding, greedy decoding, the best task-level config of ``lmtune infer`` (the
"global" config), a random grid config per input (one row per seed), the per-input oracle (the held-out
labels: an upper bound in expectation, up to the label search's own noise), and every HAG model folder given
(folders of one learner kind are seeds of that learner). A method's *gap share* is
(score - global) / (oracle - global): the part of what per-input decoding can add over the global config that
the method recovers. Stage 1's cost (tokens and seconds per input, batched) is set beside stage 2's (one fresh
request of n responses per input, batched the same way).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtune.config import build_config, check_writable_folder
from lmtune.errors import InputError
from lmtune.files import write_atomic
from lmtune.hag.config import HagEvaluateConfig
from lmtune.hag.generation import HagModel, read_meta
from lmtune.hag.labels import CountingGenerator, local_generator, make_scorer, read_labels
from lmtune.hag.learners import read_fallback
from lmtune.hag.space import Decoding, DecodingSpace
from lmtune.hag.task import HagTask, make_set_metric
from lmtune.llm.cache import CachedGenerator, ResponseStore
from lmtune.llm.generation import BackgroundLoop, Generator
from lmtune.results import Result


@dataclass
class HagEvaluateResult(Result):
    """Scores per method (mean and standard error over seeds), gap shares, and stage 1's cost."""

    labels: str
    model: str
    inputs: int
    repeats: int
    methods: list[dict]
    gap: dict | None
    stage1: dict
    stage2: dict
    table: str


def evaluate_hag(config: HagEvaluateConfig | None = None, *, generator: Generator | None = None,
                 **fields: Any) -> HagEvaluateResult:
    """Score every method on the labelled held-out inputs; writes evaluation.json and evaluation.md."""
    cfg = config or build_config(HagEvaluateConfig, **fields)
    check_writable_folder(cfg.output_dir, "output_dir")
    header, rows = read_labels(cfg.labels)
    rows = rows[:cfg.limit]
    from lmtune.llm import resolve_model

    base = str(Path(resolve_model(header["model"])).resolve())
    for directory in cfg.learners:
        meta = read_meta(directory, "learners")
        if meta["base_model"] != base:
            raise InputError("learners", f"{directory} was trained on {meta['base_model']}, but the labels are of "
                             f"{base}")
    global_config = read_fallback(cfg.global_config) if cfg.global_config else None
    task = HagTask(header["task"], [r["instance"] for r in rows], make_set_metric(header["metric"]),
                   header["metric"], template=header["template"], n=header["n"], max_tokens=header["max_tokens"],
                   stop=tuple(header["stop"]) if header["stop"] else None)
    plans = _fixed_plans(cfg, rows, DecodingSpace.from_dict(header["space"]), global_config)
    generator = generator or local_generator(header["model"], cfg.device)
    stage1: dict[str, dict] = {}
    for directory in cfg.learners:
        plans.append(_learner_plan(directory, rows, cfg.device, stage1))

    loop = BackgroundLoop()
    cache = None if cfg.cache == "none" else ResponseStore(cfg.cache or cfg.output_dir / "responses.sqlite")
    cached = CachedGenerator(generator, cache)
    try:
        scored = [(kind, label, loop.run(_scores(task, rows, configs, cached, generator.name, cfg)))
                  for kind, label, configs in plans]
        timing = _stage2_cost(task, rows, plans[-1][2], generator, loop, cfg.seed)
    finally:
        loop.run(cached.aclose())
        loop.close()
    result = _summarize(cfg, header, rows, scored, stage1, timing)
    write_atomic(cfg.output_dir / "evaluation.json", result.to_json())
    write_atomic(cfg.output_dir / "evaluation.md", result.table)
    return result


#: One method's configs: (kind, label, a config per input).
Plan = tuple[str, str, list[Decoding]]


def _fixed_plans(cfg: HagEvaluateConfig, rows: list[dict], space: DecodingSpace, global_config: Decoding | None
                 ) -> list[Plan]:
    """Every method but the learners: default and greedy decoding, lmtune infer's global config, random configs
    (one plan per seed), and the oracle last."""
    plans: list[Plan] = [
        ("default", "default decoding (temperature 1, no cuts)", [Decoding()] * len(rows)),
        ("greedy", "greedy", [Decoding(temperature=0.0).canonical()] * len(rows))]
    if global_config is not None:
        plans.append(("global", f"global: lmtune infer's best ({global_config.text()})", [global_config] * len(rows)))
    for seed in range(cfg.random_seeds):
        plans.append(("random", "random per-input config", [
            space.random_config(random.Random(f"random:{cfg.seed}:{seed}:{r['prompt']}")) for r in rows]))
    plans.append(("oracle", "per-input oracle (held-out labels)", [Decoding.from_dict(r["label"]) for r in rows]))
    return plans


def _learner_plan(directory: Path, rows: list[dict], device: str, stage1: dict[str, dict]) -> Plan:
    """A HAG model folder's choice for every input; what its stage 1 cost is added to ``stage1`` under the
    learner's kind (folders of one kind are seeds of it)."""
    model = HagModel(directory, device=device, field="learners")
    started = time.perf_counter()
    choices = model.choose([r["prompt"] for r in rows])
    seconds = time.perf_counter() - started
    name = f"hag-{model.kind}" if model.kind == "adapter" else "head"
    record = stage1.setdefault(name, {"folders": [], "seconds_per_input": [], "prompt_tokens_per_input": [],
                                      "completion_tokens_per_input": [], "statuses": defaultdict(int)})
    record["folders"].append(str(directory))
    record["seconds_per_input"].append(seconds / len(rows))
    record["prompt_tokens_per_input"].append(sum(c.prompt_tokens for c in choices) / len(rows))
    record["completion_tokens_per_input"].append(sum(c.completion_tokens for c in choices) / len(rows))
    for c in choices:
        record["statuses"][c.status] += 1
    return name, f"{name} ({Path(directory).name})", [c.config for c in choices]


async def _scores(task: HagTask, rows, configs: list[Decoding], generator, model: str, cfg) -> list[float]:
    """Each input's mean metric over ``repeats`` fresh requests with its config."""
    async def one(row, config):
        score = make_scorer(task, row["instance"], generator, model, "evaluate", cfg.seed)
        values = await asyncio.gather(*(score(config, r) for r in range(cfg.repeats)))
        return sum(values) / len(values)
    return list(await asyncio.gather(*(one(row, config) for row, config in zip(rows, configs, strict=True))))


def _stage2_cost(task: HagTask, rows, configs, generator, loop, seed: int) -> dict:
    counter = CountingGenerator(CachedGenerator(generator, None))
    started = time.perf_counter()

    async def all_rows():
        await asyncio.gather(*(make_scorer(task, row["instance"], counter, generator.name, "timing", seed)(c, 0)
                               for row, c in zip(rows, configs, strict=True)))
    loop.run(all_rows())
    n = len(rows)
    return {"seconds_per_input": (time.perf_counter() - started) / n,
            "prompt_tokens_per_input": counter.counts["prompt_tokens"] / n,
            "completion_tokens_per_input": counter.counts["completion_tokens"] / n, "responses_per_input": task.n}


def _mean_se(values: list[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def _summarize(cfg, header, rows, scored, stage1, timing) -> HagEvaluateResult:
    types = [r["instance"].get("type") for r in rows]
    per_input = {kind: values for kind, _, values in scored if kind in ("global", "oracle")}
    gap = None
    if "global" in per_input:
        diffs = [o - g for o, g in zip(per_input["oracle"], per_input["global"], strict=True)]
        mean, se = _mean_se(diffs)
        gap = {"oracle": sum(per_input["oracle"]) / len(rows), "global": sum(per_input["global"]) / len(rows),
               "gap": mean, "gap_se_over_inputs": se}
    groups: dict[str, list] = defaultdict(list)
    labels = {}
    for kind, label, values in scored:
        groups[kind].append(values)
        labels.setdefault(kind, label if kind not in ("hag-adapter", "head", "random") else
                          {"hag-adapter": "HAG: LoRA instruction tuning", "head": "predictor head on the last "
                           "hidden state", "random": "random per-input config"}[kind])
    methods = []
    for kind, runs in groups.items():
        means = [sum(v) / len(v) for v in runs]
        score, score_se = _mean_se(means)
        row = {"method": kind, "label": labels[kind], "seeds": len(runs), "score": score, "score_se": score_se,
               "by_type": {}}
        for t in sorted({t for t in types if t is not None}):
            picks = [sum(v[i] for i in range(len(rows)) if types[i] == t) / types.count(t) for v in runs]
            row["by_type"][t] = sum(picks) / len(picks)
        if gap is not None and gap["gap"] > 0:
            shares = [(m - gap["global"]) / (gap["oracle"] - gap["global"]) for m in means]
            row["gap_share"], row["gap_share_se"] = _mean_se(shares)
        methods.append(row)
    for record in stage1.values():
        record["statuses"] = dict(record["statuses"])
        for key in ("seconds_per_input", "prompt_tokens_per_input", "completion_tokens_per_input"):
            record[key] = sum(record[key]) / len(record[key])
    result = HagEvaluateResult(labels=str(cfg.labels), model=header["model"], inputs=len(rows), repeats=cfg.repeats,
                               methods=methods, gap=gap, stage1=stage1, stage2=timing, table="")
    result.table = markdown(result)
    return result


def _pm(mean: float | None, se: float | None, digits: int = 3) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")


def markdown(result: HagEvaluateResult) -> str:
    """The evaluation as a Markdown table (scores are means over seeds ± standard error over seeds)."""
    types = sorted({t for m in result.methods for t in m["by_type"]})
    lines = [f"{result.inputs} held-out inputs, {result.repeats} fresh requests each; mean ± standard error over "
             "seeds where a method has several.", "",
             "| method | seeds | score | gap share | " + " | ".join(types) + (" |" if types else ""),
             "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in types) + (" |" if types else "")]
    for m in result.methods:
        share = _pm(m.get("gap_share"), m.get("gap_share_se"), 2) if "gap_share" in m else "-"
        cells = " | ".join(f"{m['by_type'][t]:.3f}" for t in types)
        lines.append(f"| {m['label']} | {m['seeds']} | {_pm(m['score'], m['score_se'])} | {share} | {cells}"
                     + (" |" if types else ""))
    if result.gap is not None:
        g = result.gap
        lines += ["", f"Oracle - global = {g['gap']:.3f} ± {g['gap_se_over_inputs']:.3f} (standard error over "
                  "inputs, paired)."]
    if result.stage1:
        s2 = result.stage2
        lines += ["", "| stage | tokens in / input | tokens out / input | seconds / input | replies |",
                  "| --- | ---: | ---: | ---: | --- |"]
        for name, s in result.stage1.items():
            lines.append(f"| stage 1: {name} | {s['prompt_tokens_per_input']:.1f} | "
                         f"{s['completion_tokens_per_input']:.1f} | {s['seconds_per_input']:.4f} | "
                         f"{json.dumps(s['statuses'])} |")
        lines.append(f"| stage 2: the answer ({s2['responses_per_input']} responses) | "
                     f"{s2['prompt_tokens_per_input']:.1f} | {s2['completion_tokens_per_input']:.1f} | "
                     f"{s2['seconds_per_input']:.4f} | |")
    return "\n".join(lines) + "\n"
