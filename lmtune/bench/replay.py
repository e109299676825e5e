"""Replay search methods against a table: each proposed config is looked up, never trained.

Every method sees exactly what it would see in a live study: the table's grid as its search space,
one result per trial (a failed config fails the trial), and a budget counted in trials. Every method but NOMAD
is the sampler ``lmtune lora`` would run (``make_sampler``, never-repeat rule and the space's encoding included).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna

from lmtune import attrs
from lmtune.bench.config import AGENT_METHODS, METHODS
from lmtune.bench.table import Table
from lmtune.errors import InputError, TrialFailed
from lmtune.runtime.status import advisor_summary, agent_summary
from lmtune.runtime.study import name_metrics
from lmtune.samplers.registry import (
    LANGUAGE_BO_ABLATIONS,
    PLUS_OPTIONS,
    REGISTRY,
    TRANSFER_SAMPLERS,
    make_sampler,
)

if TYPE_CHECKING:
    from lmtune.samplers.language_bo.transfer import TransferSource

STARTUP_TRIALS = 5  # random trials before every model-based method, the same for all


@dataclass
class Run:
    """One method, one seed: the metric of each trial in order (``None`` for a failed config)."""

    method: str
    seed: int
    values: list[float | None]
    seconds: float
    extra: dict[str, Any] | None = None  # the agent's usage: fallbacks, tokens and seconds per suggestion


def check_methods(names: list[str]) -> list[str]:
    if not names:
        raise InputError("samplers", f"name at least one method, comma-separated; allowed: {', '.join(METHODS)}")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise InputError("samplers", f"unknown method {unknown[0]!r}; allowed: {', '.join(METHODS)}")
    return names


def check_complete(table: Table) -> None:
    if not table.complete:
        raise InputError("table", f"table {table.name} holds {len(table.rows)} of its {table.grid.pool_size} "
                         "configs; replay needs every config of the grid")


def replay(table: Table, method: str, seed: int, budget: int, *, threads: int = 1,
           agent: dict[str, Any] | None = None, sources: tuple[TransferSource, ...] = ()) -> Run:
    """Run ``method`` for ``budget`` trials against ``table`` with ``seed``; ``agent`` holds the agent sampler's
    options (endpoint, model, prompts, temperature); ``sources`` (other tables, never this one) are the memory of
    the methods that transfer (``TRANSFER_SAMPLERS``), and ignored by the others."""
    check_complete(table)
    check_methods([method])
    import torch

    torch.set_num_threads(threads)  # the GP-based samplers' fits; one thread each is fastest for models this small
    started = time.perf_counter()
    extra = {}
    values = _replay_nomad(table, seed, budget) if method == "nomad" else _replay_study(table, method, seed, budget,
                                                                                      threads, agent, extra, sources)
    return Run(method, seed, values, time.perf_counter() - started, extra or None)


def _lookup_value(table: Table, params: dict[str, Any]) -> float | None:
    return table.lookup(params)["metric"]


def search_version(method: str) -> str:
    """How a method's replays search, as far as it changed since replays were first logged: Optuna's samplers (and
    the agent's TPE fallback) see ordered numbers as indexes and never repeat a config since ordered parameters
    exist, so their replays logged before are not reused; language-BO's and NOMAD's searches are as they were."""
    entry = REGISTRY.get(method.split(":")[0])
    return "ordered-index" if entry is not None and entry.family in ("optuna", "agent") else ""


def _replay_study(table: Table, method: str, seed: int, budget: int, threads: int, agent: dict[str, Any] | None,
                  extra: dict[str, Any], sources: tuple[TransferSource, ...] = ()) -> list[float | None]:
    """One replay in an in-memory study: the method's sampler (``replay_sampler``) proposes, each trial's config
    is suggested from the grid as ``lmtune lora`` suggests it and looked up. The agent's trials carry the row's
    curves as user attributes, so its Trajectory Context Summarizer reads them as it would in a live study."""
    sampler = replay_sampler(table, method, seed, threads, agent, sources)
    study = optuna.create_study(sampler=sampler, direction=table.direction, pruner=optuna.pruners.NopPruner())
    name_metrics(study, [table.metric_name])
    values: list[float | None] = []

    def objective(trial: optuna.Trial) -> float:
        row = table.lookup(table.grid.suggest(trial))
        value = row["metric"]
        values.append(value)
        if method in AGENT_METHODS:  # what a live LoRA trial stores
            trial.set_user_attr(attrs.METRIC_NAME, table.metric_name)
            trial.set_user_attr(attrs.TRAJECTORY, row.get("trajectory") or [])
            trial.set_user_attr(attrs.STEP_LOSSES, row.get("step_losses") or [])
        if value is None:
            trial.set_user_attr(attrs.FAIL_REASON, row.get("fail_reason") or "failed when the table was built")
            raise TrialFailed("this config failed when the table was built")
        return value

    study.optimize(objective, n_trials=budget, catch=(TrialFailed,))
    if method in AGENT_METHODS:
        extra.update((advisor_summary if AGENT_METHODS[method] == "centaur" else agent_summary)(study.trials) or {})
    return values


def replay_sampler(table: Table, method: str, seed: int, threads: int = 1, agent: dict[str, Any] | None = None,
                   sources: tuple[TransferSource, ...] = ()) -> optuna.samplers.BaseSampler:
    """The sampler ``lmtune lora --sampler METHOD --seed SEED`` would run on the table's grid (``make_sampler``
    with the space, seed and start-up trials), with the options of a replay: the GP fits' threads, the table's
    description and its memory (``sources``) for ``language-bo+``, the agent's endpoint (checked once for the whole
    comparison, not per replay)."""
    options: dict[str, Any] = {}
    if method in AGENT_METHODS:  # centaur advises the registry's DEFAULT_SAMPLER (without memory)
        options = {**(agent or {}), "check": False, "mode": AGENT_METHODS[method]}
        method = "agent"
    elif method in PLUS_OPTIONS:
        options = {"fit_threads": threads, "description": table_description(table),
                   "transfer": tuple(sources) if method in TRANSFER_SAMPLERS else ()}
    elif method in LANGUAGE_BO_ABLATIONS:
        options = {"fit_threads": threads, **LANGUAGE_BO_ABLATIONS[method]}
    return make_sampler(method, space=table.grid, seed=seed, n_startup_trials=STARTUP_TRIALS, **options)


def table_description(table: Table) -> str:
    """What a table's rows measure, in words (the description ``language-bo+`` compares between studies)."""
    from lmtune.samplers.language_bo.transfer import describe_recipe

    return describe_recipe(table.recipe, table.metric_name, table.direction, table.grid.fixed)


def table_source(table: Table) -> TransferSource:
    """A table's rows as the memory of another study (``language-bo+``'s transfer)."""
    from lmtune.samplers.language_bo.transfer import source_from_rows

    return source_from_rows(table.name, table.grid, table.direction,
                            [(row["params"], row["metric"]) for row in table.rows], table_description(table))


def _replay_nomad(table: Table, seed: int, budget: int) -> list[float | None]:
    """NOMAD's mesh-adaptive direct search over each parameter's index into its list: for ordered numbers the
    encoding Optuna's samplers see (``Ordered.index_distribution``, ``Ordered.value_at``); NOMAD has no
    categorical variables, so a name's position in its list stands in for it.

    NOMAD minimizes and caches the points it has evaluated. When its mesh converges before the budget
    is spent it is restarted from a new random point with what is left, as a user would.
    """
    import PyNomad

    params = table.grid.params
    upper = [len(p.values()) - 1 for p in params]
    sign = -1.0 if table.direction == "maximize" else 1.0
    rng = np.random.default_rng(seed)
    values: list[float | None] = []

    def blackbox(point) -> int:
        if len(values) >= budget:
            return 0
        config = {p.name: p.values()[int(round(point.get_coord(i)))] for i, p in enumerate(params)}
        value = _lookup_value(table, config)
        values.append(value)
        if value is None:
            return 0  # a failed evaluation: NOMAD records it as such
        point.setBBO(str(sign * value).encode("UTF-8"))
        return 1

    restarts = 0
    while len(values) < budget and restarts < budget:
        start = [int(rng.integers(0, u + 1)) for u in upper]
        options = ["BB_OUTPUT_TYPE OBJ", f"MAX_BB_EVAL {budget - len(values)}",
                   f"BB_INPUT_TYPE ({' '.join('I' for _ in params)})", f"SEED {seed + 1000 * restarts}",
                   "DISPLAY_DEGREE 0"]
        before = len(values)
        PyNomad.resetRandomNumberGenerator()  # NOMAD's generator is global: reset it so a seed means one run
        PyNomad.setSeed(seed + 1000 * restarts)
        with _stdout_silenced():  # NOMAD's C++ core prints notes straight to file descriptor 1
            PyNomad.optimize(blackbox, start, [0] * len(params), upper, options)
        restarts += 1
        if len(values) == before:  # nothing new was evaluated: the grid around every start is exhausted
            break
    return values[:budget]


@contextlib.contextmanager
def _stdout_silenced() -> Iterator[None]:
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


# -- scoring -----------------------------------------------------------------------------------

def regret_curve(table: Table, values: list[float | None], budget: int) -> np.ndarray:
    """Normalized regret of the best config found after each of ``budget`` trials (1 until one succeeds)."""
    best: float | None = None
    curve = np.ones(budget)
    better = max if table.direction == "maximize" else min
    for i in range(budget):
        value = values[i] if i < len(values) else None
        if value is not None and math.isfinite(value):
            best = value if best is None else better(best, value)
        curve[i] = table.regret(best)
    return curve


def trials_to_reach(table: Table, values: list[float | None], threshold: float) -> float:
    """1-based trial at which a config at least as good as ``threshold`` was first found (inf if never)."""
    for i, value in enumerate(values, 1):
        if value is not None and (value >= threshold if table.direction == "maximize" else value <= threshold):
            return float(i)
    return math.inf
