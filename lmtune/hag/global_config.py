"""The global config: one decoding for every input of a task, the baseline that per-input decoding must beat.

``lmtune hag global`` finds it with ``lmtune infer``'s search (EcoOptiGen, "Cost-Effective Hyperparameter
Optimization for Large Language Model Generation Inference", arXiv:2303.04673) on the labelled training inputs,
with the labels' metric, template, n and max_tokens, temperature, top_p, top_k and repetition_penalty searched
over the label grid's ranges, and by default the generation budget that labelling those inputs cost: per-input
decoding and the global config then start from the same spend. The hag package does not import ``lmtune.inference``
(one layer); the command passes ``tune_inference`` in.

Every command that takes a global config (``hag train``, ``hag evaluate``) checks that it was found on the labels'
own task and metric: a config tuned for another task is no baseline.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtune.config import build_config
from lmtune.errors import InputError
from lmtune.files import write_atomic
from lmtune.hag.config import HagGlobalConfig
from lmtune.hag.labels import read_labels
from lmtune.hag.space import Decoding, DecodingSpace
from lmtune.hag.task import metric_path
from lmtune.results import Result

#: The key ``lmtune hag global`` adds to lmtune infer's results.json: the labels it tuned on.
LABELS_KEY = "hag_labels"
#: Dollars per 1,000 tokens in the price table of the search: a budget of $1 is 10^6 tokens.
TOKEN_PRICE = 0.001


@dataclass
class HagGlobalResult(Result):
    """The global config found, what it scored and what its search spent."""

    results: str
    task: str
    metric: str
    config: dict | None
    tuning_score: float | None
    test_score: float | None
    budget_tokens: int
    spent_tokens: float
    trials: dict


def read_global_config(path: Path | None, header: dict, field: str) -> Decoding:
    """The best config of a results.json of ``lmtune hag global`` (or ``lmtune infer`` run on the same task and
    metric) as a full decoding; the API default decoding when there is none. ``InputError(field, ...)`` when the
    file is not one, or was found on another task or metric than the labels' (``header``)."""
    if path is None:
        return Decoding()
    try:
        results = json.loads(Path(path).read_text())
        best = results["best"]
        source = results.get(LABELS_KEY) or results
        task, metric = source["task"], source["metric"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise InputError(field, f"{path} is not a results.json of lmtune hag global or lmtune infer") from None
    if (task, metric) != (header["task"], header["metric"]):
        raise InputError(field, f"{path} was tuned on task {task!r} with metric {metric!r}, but the labels are of "
                         f"task {header['task']!r} with metric {header['metric']!r}; make the global config of these "
                         "labels with lmtune hag global")
    if not best:
        raise InputError(field, f"{path} has no best config (its search found none within its budgets)")
    return Decoding.filled(best["config"])


def find_global_config(config: HagGlobalConfig | None = None, *, tune: Callable[[dict[str, Any]], Any],
                       **fields: Any) -> HagGlobalResult:
    """Search the global config of a label file's task; ``tune(infer_fields)`` runs ``lmtune infer`` with them
    (``InferConfig`` fields) and writes its results.json, to which the labels' task and metric are then added."""
    cfg = config or build_config(HagGlobalConfig, **fields)
    header, rows = read_labels(cfg.labels)
    budget = cfg.budget_tokens or _label_tokens(cfg.labels, header)
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    tune(infer_fields(cfg, header, rows, budget))
    path = cfg.output_dir / "results.json"
    results = json.loads(path.read_text())
    results[LABELS_KEY] = {"task": header["task"], "metric": header["metric"], "split": header["split"],
                           "model": header["model"], "labels": str(cfg.labels), "budget_tokens": budget}
    write_atomic(path, json.dumps(results, indent=2))
    best = results["best"] or {}
    return HagGlobalResult(
        results=str(path), task=header["task"], metric=header["metric"],
        config=Decoding.filled(best["config"]).as_dict() if best else None,
        tuning_score=best.get("tuning", {}).get("quality"), test_score=(best.get("test") or {}).get("quality"),
        budget_tokens=budget, spent_tokens=results["spend"]["real"] / TOKEN_PRICE * 1000, trials=results["trials"])


def infer_fields(cfg: HagGlobalConfig, header: dict, rows: list[dict], budget_tokens: int) -> dict[str, Any]:
    """The ``lmtune infer`` run that finds the global config: the labelled inputs as its task file (with an
    ``answer`` field, which lmtune infer asks of every line), the labels' metric as ``module:function``, n,
    max_tokens, template and stop fixed, the four sampling hyperparameters over the grid's ranges, and a price
    table that makes dollars tokens / 10^6."""
    from lmtune.llm import resolve_model

    task_file = cfg.output_dir / f"{header['split']}-inputs.jsonl"
    write_atomic(task_file, "".join(json.dumps({"answer": None, **r["instance"]}) + "\n" for r in rows))
    model = header["model"]
    prices = cfg.output_dir / "prices.yaml"
    names = {model, Path(resolve_model(model)).name}  # how a local model is named: its alias, or its folder's name
    write_atomic(prices, "".join(f"{name}: {{input: {TOKEN_PRICE}, output: {TOKEN_PRICE}}}\n" for name in names))
    grid = DecodingSpace.from_dict(header["space"]).grid
    span = {name: (min(grid[name]), max(grid[name])) for name in ("temperature", "top_p", "repetition_penalty")}
    return {"task": str(task_file), "local_model": model, "device": cfg.device, "metric": metric_path(header["metric"]),
            "templates": [header["template"]], "stops": [header["stop"]] if header["stop"] else [],
            "sampling": "both", **span, "top_k": list(grid["top_k"]),
            "max_tokens": (header["max_tokens"],) * 2, "n": (header["n"],) * 2, "prices": str(prices),
            "inference_budget": 1.0, "optimization_budget": budget_tokens * TOKEN_PRICE / 1000,
            "test_fraction": cfg.test_fraction, "max_trials": cfg.max_trials, "seed": cfg.seed,
            "storage": cfg.storage, "study_name": cfg.study_name or f"hag-global-{Path(header['task']).stem}",
            "output_dir": cfg.output_dir, "cache": cfg.cache}


def _label_tokens(labels: Path, header: dict) -> int:
    """The tokens labelling the split cost, from the ``label-<split>.json`` that ``lmtune hag label`` wrote beside
    the label file."""
    summary = Path(labels).parent / f"label-{header['split']}.json"
    try:
        budget = json.loads(summary.read_text())["budget"]
        return int(budget["prompt_tokens"] + budget["completion_tokens"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise InputError("budget_tokens", f"give the tokens the search may spend: there is no {summary} to take "
                         "the labels' generation budget from") from None
