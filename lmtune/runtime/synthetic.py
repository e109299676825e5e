"""Synthetic objectives over an lmtune space whose cost is a sleep: for testing and measuring workers.

``lmtune worker --objective lmtune.runtime.synthetic:sleepy_quadratic`` runs one instead of LoRA training,
so storage, samplers, heartbeats, retries and the trial budget are exercised as in a real study
at a known, small cost per trial. ``LMTUNE_SYNTHETIC_SECONDS`` (default 0.5) sets the sleep; the
time the sampler took is stored in the trial's ``suggest_seconds`` attribute.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import optuna

from lmtune import attrs
from lmtune.errors import InputError
from lmtune.space import Listed, Param, SearchSpace

SECONDS_ENV = "LMTUNE_SYNTHETIC_SECONDS"


def sleepy_quadratic(space: SearchSpace) -> Callable[[optuna.Trial], float]:
    """An objective that suggests every parameter of ``space``, sleeps, and scores the config by
    ``-sum((position - 0.3)^2)`` over the parameters' positions in [0, 1] (best near 30% of each range)."""
    raw = os.environ.get(SECONDS_ENV, "0.5")
    try:
        seconds = float(raw)
    except ValueError:
        raise InputError(SECONDS_ENV, f"must be a number of seconds, got {raw!r}") from None
    if not 0 <= seconds < 3600:
        raise InputError(SECONDS_ENV, f"must be in [0, 3600) seconds, got {seconds}")

    def objective(trial: optuna.Trial) -> float:
        started = time.perf_counter()
        config = space.suggest(trial)  # the sampler runs here (Optuna samples lazily)
        trial.set_user_attr(attrs.SUGGEST_SECONDS, time.perf_counter() - started)
        time.sleep(seconds)
        return -sum((position(p, config[p.name]) - 0.3) ** 2 for p in space.params)

    return objective


def position(param: Param, value: float | int | str | bool) -> float:
    """Where ``value`` lies in the parameter's range, from 0 to 1 (log scale where the parameter is)."""
    if isinstance(param, Listed):
        values = param.values()
        return values.index(param.canonical(value)) / max(1, len(values) - 1)
    low, high, x = float(param.low), float(param.high), float(value)
    if param.log:
        low, high, x = math.log(low), math.log(high), math.log(x)
    return 0.0 if high == low else (x - low) / (high - low)
