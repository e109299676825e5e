"""Can the proxy subset be trusted? Train a few configs on the proxy and on all data, and correlate.

The check of Table 7 of "Efficient Hyper-parameter Search for LoRA via Language-aided Bayesian Optimization".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from lmtune.errors import InputError, TrialFailed
from lmtune.finetune.data import proxy_subset
from lmtune.finetune.hparams import LoraHyperparams
from lmtune.finetune.reuse import ReusableBase
from lmtune.finetune.train import train_and_evaluate
from lmtune.lora.config import LoraRunConfig
from lmtune.lora.tune import prepare_run
from lmtune.results import Result
from lmtune.space import SearchSpace

log = logging.getLogger(__name__)


@dataclass
class ProxyCheckResult(Result):
    """Each config's proxy and full score, and their Pearson correlation (None: too few pairs or no spread)."""

    proxy_fraction: float
    proxy_examples: int
    full_examples: int
    configs: list[dict[str, Any]]
    paired: int
    pearson: float | None


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
    """Train ``configs`` random configs on the proxy subset and on the full training split.

    Both are scored on the validation split. Returns each pair and the Pearson correlation
    between proxy and full scores over the configs that finished both runs.
    """
    if configs < 3:
        raise InputError("configs", f"need at least 3 configs for a correlation, got {configs}")
    space, splits, model, settings = prepare_run(cfg)
    chosen = sample_configs(space, configs, cfg.seed)
    proxy_rows = proxy_subset(splits.train, cfg.proxy_fraction, cfg.seed)
    reuse = ReusableBase()  # one base for every run: all use the same seed
    rows = []
    for i, params in enumerate(chosen, 1):
        hp = LoraHyperparams.from_params(params)
        row: dict[str, Any] = {"params": params}
        for name, train_rows in (("proxy", proxy_rows), ("full", splits.train)):
            try:
                result = train_and_evaluate(hp, train_rows, splits.validation, task=splits.task, model=model,
                                            label_names=splits.label_names, settings=settings,
                                            target_modules=cfg.target_modules, reuse=reuse)
                row[name], row["metric_name"] = result.metric, result.metric_name
            except TrialFailed as error:
                row[name], row[f"{name}_fail_reason"] = None, str(error)
        log.info("config %d/%d: proxy %s  full %s  %s", i, len(chosen), _fmt(row["proxy"]), _fmt(row["full"]), params)
        rows.append(row)
    paired = [(r["proxy"], r["full"]) for r in rows if r["proxy"] is not None and r["full"] is not None]
    pearson = None
    if len(paired) >= 3 and np.ptp([p for p, _ in paired]) > 0 and np.ptp([f for _, f in paired]) > 0:
        pearson = float(np.corrcoef(np.array(paired).T)[0, 1])
    return ProxyCheckResult(proxy_fraction=cfg.proxy_fraction, proxy_examples=len(proxy_rows),
                            full_examples=len(splits.train), configs=rows, paired=len(paired), pearson=pearson)


def _fmt(value: float | None) -> str:
    return "FAIL" if value is None else f"{value:.4f}"
