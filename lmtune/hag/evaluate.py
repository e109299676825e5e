"""``lmtune hag evaluate``: per-input decoding against one decoding for all, on held-out inputs.

Every method gives each held-out input a config; each config is scored on ``repeats`` fresh seeded requests of
n responses (seeds that the label search never used, and the same seeds for every method: common random
numbers). Methods: the API default decoding, greedy decoding, the global config (``lmtune hag global``), a
random grid config per input (one row per seed), the label search's own best config of each input (the held-out
labels), every HAG model folder given (folders of one learner kind are seeds of it; a ``head`` or ``neighbours``
folder gives two rows, its choice without the guard and with it), and the per-input oracle: on each input, the
best score of every config any method gave it, on these very draws, so that no method can exceed it. A method's
*gap share* is (score - global) / (oracle - global), the part of what per-input decoding added over the global
config on these draws that the method recovers; its *per-input share* is the share of inputs that got a config
of their own (for a learner, other than the global config). Stage 1's cost (tokens and seconds per input,
batched) is set beside stage 2's (one fresh request of n responses per input, batched the same way).
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
from lmtune.hag.global_config import read_global_config
from lmtune.hag.head import PREDICTOR_FILES
from lmtune.hag.labels import CountingGenerator, local_generator, make_scorer, mean_scores, read_labels, task_of_header
from lmtune.hag.space import Decoding, DecodingSpace
from lmtune.llm.cache import CachedGenerator, ResponseStore
from lmtune.llm.generation import BackgroundLoop, Generator
from lmtune.results import Result

LABELS = {"hag-adapter": "HAG: LoRA instruction tuning", "head": "head: a network on hidden states, no guard",
          "head+guard": "head, guarded", "neighbours": "neighbours: nearest training inputs, no guard",
          "neighbours+guard": "neighbours, guarded", "random": "random per-input config"}


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


@dataclass
class Plan:
    """One method's configs, and which inputs got a config of their own."""

    kind: str
    label: str
    configs: list[Decoding]
    own: list[bool]


def evaluate_hag(config: HagEvaluateConfig | None = None, *, generator: Generator | None = None,
                 **fields: Any) -> HagEvaluateResult:
    """Score every method on the labelled held-out inputs; writes evaluation.json and evaluation.md."""
    cfg = config or build_config(HagEvaluateConfig, **fields)
    check_writable_folder(cfg.output_dir, "output_dir")
    header, rows = read_labels(cfg.labels)
    rows = rows[:cfg.limit]
    global_config = read_global_config(cfg.global_config, header, "global_config") if cfg.global_config else None
    _check_learners(cfg, header, global_config)
    plans = _fixed_plans(cfg, rows, DecodingSpace.from_dict(header["space"]), global_config)
    generator = generator or local_generator(header["model"], cfg.device)
    stage1: dict[str, dict] = {}
    for directory in cfg.learners:
        plans += _learner_plans(directory, rows, cfg.device, stage1)

    task = task_of_header(header, [r["instance"] for r in rows])
    loop = BackgroundLoop()
    cache = None if cfg.cache == "none" else ResponseStore(cfg.cache or cfg.output_dir / "responses.sqlite")
    cached = CachedGenerator(generator, cache)
    try:
        scored = [(plan, loop.run(mean_scores(task, rows, plan.configs, cached, generator.name, "evaluate", cfg.seed,
                                              cfg.repeats))) for plan in plans]
        timing = _stage2_cost(task, rows, plans[-1].configs, generator, loop, cfg.seed)
    finally:
        loop.run(cached.aclose())
        loop.close()
    scored.append(_oracle(scored, global_config))
    result = _summarize(cfg, header, rows, scored, stage1, timing)
    write_atomic(cfg.output_dir / "evaluation.json", result.to_json())
    write_atomic(cfg.output_dir / "evaluation.md", result.table)
    return result


def _check_learners(cfg: HagEvaluateConfig, header: dict, global_config: Decoding | None) -> None:
    """Every learner is of the labels' base model, and a guarded one falls back to this global config."""
    from lmtune.llm import resolve_model

    base = str(Path(resolve_model(header["model"])).resolve())
    for directory in cfg.learners:
        meta = read_meta(directory, "learners")
        if meta["base_model"] != base:
            raise InputError("learners", f"{directory} was trained on {meta['base_model']}, but the labels are of "
                             f"{base}")
        fallback = Decoding.from_dict(meta["fallback"])
        if meta["learner"] in PREDICTOR_FILES and global_config is not None and fallback != global_config:
            raise InputError("learners", f"{directory} learned margins over {fallback.text()}, not over the "
                             f"`global_config` ({global_config.text()}); train it with the same global config")


def _fixed_plans(cfg: HagEvaluateConfig, rows: list[dict], space: DecodingSpace, global_config: Decoding | None
                 ) -> list[Plan]:
    """Every method but the learners and the oracle: default and greedy decoding, the global config, random
    configs (one plan per seed) and the held-out labels."""
    n = len(rows)
    plans = [Plan("default", "default decoding (temperature 1, no cuts)", [Decoding()] * n, [False] * n),
             Plan("greedy", "greedy", [Decoding(temperature=0.0).canonical()] * n, [False] * n)]
    if global_config is not None:
        plans.append(Plan("global", f"global: lmtune hag global's best ({global_config.text()})", [global_config] * n,
                          [False] * n))
    for seed in range(cfg.random_seeds):
        plans.append(Plan("random", LABELS["random"], [
            space.random_config(random.Random(f"random:{cfg.seed}:{seed}:{r['prompt']}")) for r in rows], [True] * n))
    labels = [Decoding.from_dict(r["label"]) for r in rows]
    plans.append(Plan("labels", "label search's best config (held-out labels)", labels,
                      [global_config is None or c != global_config for c in labels]))
    return plans


def _learner_plans(directory: Path, rows: list[dict], device: str, stage1: dict[str, dict]) -> list[Plan]:
    """A HAG model folder's choices (a predictor's without and with its guard); what its stage 1 cost is added to
    ``stage1`` under the learner's kind (folders of one kind are seeds of it)."""
    model = HagModel(directory, device=device, field="learners")
    started = time.perf_counter()
    choices = model.choose([r["prompt"] for r in rows])
    seconds = time.perf_counter() - started
    name = f"hag-{model.kind}" if model.kind == "adapter" else model.kind
    record = stage1.setdefault(name, {"folders": [], "seconds_per_input": [], "prompt_tokens_per_input": [],
                                      "completion_tokens_per_input": [], "statuses": defaultdict(int)})
    record["folders"].append(str(directory))
    record["seconds_per_input"].append(seconds / len(rows))
    record["prompt_tokens_per_input"].append(sum(c.prompt_tokens for c in choices) / len(rows))
    record["completion_tokens_per_input"].append(sum(c.completion_tokens for c in choices) / len(rows))
    for c in choices:
        record["statuses"][c.status] += 1
    folder = Path(directory).name
    if model.kind == "adapter":
        return [Plan(name, f"{LABELS[name]} ({folder})", [c.config for c in choices],
                     [c.config != model.fallback for c in choices])]
    return [Plan(name, f"{LABELS[name]} ({folder})", [c.unguarded for c in choices], [c.gain > 0 for c in choices]),
            Plan(f"{name}+guard", f"{LABELS[name + '+guard']} ({folder})", [c.config for c in choices],
                 [c.status == "chosen" for c in choices])]


def _oracle(scored: list[tuple[Plan, list[float]]], global_config: Decoding | None) -> tuple[Plan, list[float]]:
    """Each input's best score over every config a method gave it, on the same draws; an input got a config of
    its own when that best beats the global config's score there."""
    n = len(scored[0][1])
    best = [max(values[i] for _, values in scored) for i in range(n)]
    global_scores = next((values for plan, values in scored if plan.kind == "global"), None)
    own = [global_scores is None or best[i] > global_scores[i] for i in range(n)]
    configs = [max(scored, key=lambda item, i=i: item[1][i])[0].configs[i] for i in range(n)]
    label = "per-input oracle: the best of every config above, on each input, on these draws"
    return Plan("oracle", label, configs, own), best


def _stage2_cost(task, rows, configs, generator, loop, seed: int) -> dict:
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


def _gap(scored: list[tuple[Plan, list[float]]]) -> dict | None:
    """Oracle - global, paired over inputs, when there is a global config."""
    per_input = {plan.kind: values for plan, values in scored if plan.kind in ("global", "oracle")}
    if "global" not in per_input:
        return None
    n = len(per_input["global"])
    mean, se = _mean_se([o - g for o, g in zip(per_input["oracle"], per_input["global"], strict=True)])
    return {"oracle": sum(per_input["oracle"]) / n, "global": sum(per_input["global"]) / n, "gap": mean,
            "gap_se_over_inputs": se}


def _method(kind: str, label: str, runs: list[tuple[Plan, list[float]]], types: list, gap: dict | None) -> dict:
    """One method's row: score over inputs (mean ± standard error over seeds), per type, per-input share, gap
    share."""
    means = [sum(values) / len(values) for _, values in runs]
    score, score_se = _mean_se(means)
    row = {"method": kind, "label": label, "seeds": len(runs), "score": score, "score_se": score_se,
           "per_input_share": sum(sum(plan.own) / len(plan.own) for plan, _ in runs) / len(runs), "by_type": {}}
    for t in sorted({t for t in types if t is not None}):
        picks = [sum(v for v, vt in zip(values, types, strict=True) if vt == t) / types.count(t) for _, values in runs]
        row["by_type"][t] = sum(picks) / len(picks)
    if gap is not None and gap["gap"] > 0:
        row["gap_share"], row["gap_share_se"] = _mean_se([(m - gap["global"]) / gap["gap"] for m in means])
    return row


def _summarize(cfg, header, rows, scored, stage1, timing) -> HagEvaluateResult:
    types = [r["instance"].get("type") for r in rows]
    gap = _gap(scored)
    groups: dict[str, list] = defaultdict(list)
    labels: dict[str, str] = {}
    for plan, values in scored:
        groups[plan.kind].append((plan, values))
        labels.setdefault(plan.kind, LABELS.get(plan.kind, plan.label))
    methods = [_method(kind, labels[kind], runs, types, gap) for kind, runs in groups.items()]
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
    """The evaluation as Markdown tables (scores are means over seeds ± standard error over seeds)."""
    types = sorted({t for m in result.methods for t in m["by_type"]})
    lines = [f"{result.inputs} held-out inputs, {result.repeats} fresh requests each; mean ± standard error over "
             "seeds where a method has several; per-input: the share of inputs given a config of their own.", "",
             "| method | seeds | score | gap share | per-input | " + " | ".join(types) + (" |" if types else ""),
             "| --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in types) + (" |" if types else "")]
    for m in result.methods:
        share = _pm(m.get("gap_share"), m.get("gap_share_se"), 2) if "gap_share" in m else "-"
        cells = " | ".join(f"{m['by_type'][t]:.3f}" for t in types)
        lines.append(f"| {m['label']} | {m['seeds']} | {_pm(m['score'], m['score_se'])} | {share} | "
                     f"{m['per_input_share']:.2f} | {cells}" + (" |" if types else ""))
    if result.gap is not None:
        g = result.gap
        se = f" ± {g['gap_se_over_inputs']:.3f}" if g["gap_se_over_inputs"] is not None else ""
        lines += ["", f"Oracle - global = {g['gap']:.3f}{se} (standard error over inputs, paired)."]
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
