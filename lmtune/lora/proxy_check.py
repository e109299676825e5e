"""Can the proxy be trusted? Train a few configs as trials and as full runs, correlate, and say what to change.

The check of Table 7 of "Efficient Hyper-parameter Search for LoRA via Language-aided Bayesian Optimization",
on the proxy a search would use (``lmtune.finetune.proxy``): both validation metrics (the task's and the
loss), Pearson and Spearman, what a trial costs next to a full run, and, when the proxy does not track the
full run, how many steps (and which data fraction) to try instead.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from lmtune.correlation import correlate
from lmtune.errors import InputError, TrialFailed
from lmtune.finetune.data import proxy_subset
from lmtune.finetune.hparams import LoraHyperparams
from lmtune.finetune.proxy import full_run_steps
from lmtune.finetune.reuse import ReusableBase
from lmtune.finetune.train import metric_direction, train_and_evaluate
from lmtune.lora.config import LoraRunConfig
from lmtune.lora.search import prepare_run, proxy_plan
from lmtune.results import Result
from lmtune.space import SearchSpace

log = logging.getLogger(__name__)
#: Rank correlation from which a proxy is taken to track the full run.
TRACKS = 0.8


@dataclass
class ProxyCheckResult(Result):
    """Each config's proxy and full scores and their correlations, the proxy's cost and a recommendation.

    ``pearson``/``spearman`` compare the proxy's ranking metric with the full run's task metric (None: fewer
    than 3 pairs or no spread); ``correlations`` holds them for every proxy metric and for the proxy's
    earlier evaluations (``{metric: {evaluation number: {"pearson", "spearman"}}}``). ``cost_share`` is the proxy's
    training examples over a full run's (mean over the configs), ``seconds_share`` the same in measured time.
    """

    proxy_fraction: float
    proxy_examples: int
    full_examples: int
    configs: list[dict[str, Any]]
    paired: int
    pearson: float | None
    proxy_steps: int | None = None
    proxy_share: float | None = None
    proxy_metric: str | None = None
    metric_name: str | None = None
    spearman: float | None = None
    correlations: dict[str, dict[int, dict[str, float | None]]] = dataclasses.field(default_factory=dict)
    cost_share: float | None = None
    seconds_share: float | None = None
    tracks: bool | None = None
    recommendation: str | None = None


def sample_configs(space: SearchSpace, count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` distinct seeded random configs of ``space`` (all of a smaller pool)."""
    sampler = optuna.samplers.RandomSampler(seed=seed)
    study = optuna.create_study(sampler=sampler)
    limit = space.pool_size if space.is_discrete else count
    configs: list[dict[str, Any]] = []
    while len(configs) < min(count, limit):
        trial = study.ask(space.distributions())
        study.tell(trial, 0.0)  # the value is unused; telling lets the next ask draw afresh
        config = {**trial.params, **space.fixed}
        if config not in configs:
            configs.append(config)
    return configs


def proxy_check(cfg: LoraRunConfig, configs: int = 8) -> ProxyCheckResult:
    """Train ``configs`` random configs as the search's trials would and on the full training split.

    Both are scored on the validation split. The proxy is the one ``lmtune lora`` with the same options would
    use (steps, fraction, metric).
    """
    if configs < 3:
        raise InputError("configs", f"need at least 3 configs for a correlation, got {configs}")
    space, splits, model, settings = prepare_run(cfg)
    plan = proxy_plan(cfg, space, splits, settings)
    proxy_rows = proxy_subset(splits.train, plan.fraction, cfg.seed)
    reuse = ReusableBase()  # one base for every run: all use the same seed
    rows = []
    for i, params in enumerate(sample_configs(space, configs, cfg.seed), 1):
        hp = LoraHyperparams.from_params(params)
        row: dict[str, Any] = {"params": params, "batch_size": hp.batch_size}
        trial_settings = dataclasses.replace(settings, steps=plan.trial_steps(hp.batch_size))
        for name, train_rows, run_settings in (("proxy", proxy_rows, trial_settings), ("full", splits.train, settings)):
            try:
                result = train_and_evaluate(hp, train_rows, splits.validation, task=splits.task, model=model,
                                            label_names=splits.label_names, settings=run_settings,
                                            target_modules=cfg.target_modules, reuse=reuse)
            except TrialFailed as error:
                row[name], row[f"{name}_fail_reason"] = None, str(error)
                continue
            row[name], row["metric_name"] = result.metric, result.metric_name
            row[f"{name}_eval_loss"], row[f"{name}_seconds"] = result.eval_loss, round(result.train_seconds, 2)
            row[f"{name}_steps"] = result.steps
            if name == "proxy":
                row["proxy_trajectory"] = result.trajectory
        log.info("config %d/%d: proxy %s  full %s  %s", i, configs, _fmt(row["proxy"]), _fmt(row["full"]), params)
        rows.append(row)
    return _summarize(cfg, plan, rows, len(splits.train), settings.epochs)


def _summarize(cfg: LoraRunConfig, plan, rows: list[dict], full_examples: int, epochs: float) -> ProxyCheckResult:
    task_metric = next((r["metric_name"] for r in rows if "metric_name" in r), None)
    full = [r["full"] for r in rows]
    sign = 1.0 if task_metric is None or metric_direction(task_metric) == "maximize" else -1.0
    correlations: dict[str, dict[int, dict[str, float | None]]] = {}
    for metric in dict.fromkeys(m for m in (task_metric, "eval_loss") if m is not None):
        direction = 1.0 if metric_direction(metric) == "maximize" else -1.0
        evaluations = max((len(r.get("proxy_trajectory", [])) for r in rows), default=0)
        correlations[metric] = {
            k: correlate([_at(r, k, metric) for r in rows], full, sign * direction) for k in range(1, evaluations + 1)}
    paired = sum(1 for r in rows if r["proxy"] is not None and r["full"] is not None)
    last = {m: by_evaluation[max(by_evaluation)] if by_evaluation else {"pearson": None, "spearman": None}
            for m, by_evaluation in correlations.items()}
    chosen = last.get(plan.metric) or last.get(task_metric) or {"pearson": None, "spearman": None}
    shares = [r["proxy_steps"] / full_run_steps(full_examples, r["batch_size"], epochs)
              for r in rows if r.get("proxy_steps")]
    seconds = [r["proxy_seconds"] / r["full_seconds"] for r in rows if r.get("proxy_seconds") and r.get("full_seconds")]
    result = ProxyCheckResult(
        proxy_fraction=plan.fraction, proxy_examples=plan.rows, full_examples=full_examples, configs=rows,
        paired=paired, pearson=chosen["pearson"], spearman=chosen["spearman"], proxy_steps=plan.steps,
        proxy_share=plan.share,
        proxy_metric=plan.metric, metric_name=task_metric, correlations=correlations,
        cost_share=float(np.mean(shares)) if shares else None,
        seconds_share=float(np.mean(seconds)) if seconds else None)
    result.tracks = None if chosen["spearman"] is None else chosen["spearman"] >= TRACKS
    result.recommendation = _recommend(result, plan, last, full_examples, epochs)
    return result


def _recommend(result: ProxyCheckResult, plan, last: dict, full_examples: int, epochs: float) -> str | None:
    """What to change when the proxy does not track the full run: another metric, or more steps."""
    if result.tracks is None:
        return "too few configs finished both runs to judge the proxy; check more configs"
    better = max(last, key=lambda m: last[m]["spearman"] if last[m]["spearman"] is not None else -2)
    if better != plan.metric and (last[better]["spearman"] or -2) >= TRACKS:
        return f"rank trials by {better} (`proxy_metric` {better}): Spearman {last[better]['spearman']:.2f}"
    if result.tracks:
        return None
    if plan.share is not None:
        share = min(1.0, plan.share * 2)
        note = "" if share < 1 else " (a full run: the proxy saves nothing here)"
        return (f"train longer: `proxy` share:{share:.2g}{note}, then run proxy-check again; "
                f"Spearman was {result.spearman:.2f} at {plan.share:.0%} of each full run")
    longest = max(plan.batch_sizes)
    steps = plan.longest * 2
    ceiling = full_run_steps(full_examples, longest, epochs)
    fraction = min(1.0, steps * longest / full_examples)
    note = "" if steps <= ceiling else f" (longer than a full run at batch {longest}: the proxy saves little here)"
    return (f"train longer: `proxy` steps:{steps} `proxy_fraction` {fraction:.2g}{note}, then run proxy-check again; "
            f"Spearman was {result.spearman:.2f} at {plan.longest} steps")


def _at(row: dict, evaluation: int, metric: str) -> float | None:
    """The ``metric`` of a config's ``evaluation``-th proxy evaluation (configs of other batch sizes evaluate
    at other steps, but at the same share of their run)."""
    trajectory = row.get("proxy_trajectory", [])
    if len(trajectory) < evaluation:
        return None
    value = trajectory[evaluation - 1].get(metric)
    return value if value is not None and math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    return "FAIL" if value is None else f"{value:.4f}"
