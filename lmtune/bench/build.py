"""Build a benchmark table: train every grid config through one Optuna study, then export the rows.

The study is the table under construction. It lives in any Optuna storage, so a build resumes after
an interruption and several processes or machines can fill one table together: each draws configs
that no trial holds yet (``ShuffledGridSampler``), so a half-built table is a uniform sample of the grid.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from lmtune.bench.table import Table
from lmtune.bench.tables import TableSpec
from lmtune.errors import InputError
from lmtune.finetune.data import DatasetSplits, load_dataset
from lmtune.finetune.objective import LoraObjective
from lmtune.finetune.peft_model import check_model
from lmtune.finetune.train import TrainSettings, metric_direction, metric_name
from lmtune.llm import resolve_model
from lmtune.samplers.grid import GRID_INDEX, ShuffledGridSampler
from lmtune.study import INTERRUPTED, counted_trials, make_storage, open_study, run_trials

FULL_SUFFIX = "-full"


@dataclasses.dataclass
class TrainingSetup:
    """What every row of a table is trained with: data, model, training settings and the metric."""

    splits: DatasetSplits
    model: str
    settings: TrainSettings
    metric_name: str
    direction: str


def training_setup(spec: TableSpec, threads: int | None) -> TrainingSetup:
    splits = load_dataset(spec.dataset, task=spec.task, seed=spec.seed)
    model = resolve_model(spec.model)
    check_model(model)
    settings = TrainSettings(max_length=spec.max_length, epochs=spec.epochs, eval_points=spec.eval_points,
                             exact_match=spec.exact_match, seed=spec.seed, threads=threads)
    name = metric_name(splits.task, settings)
    return TrainingSetup(splits, model, settings, name, metric_direction(name))


def build_table(spec: TableSpec, *, storage: str | None = None, study_name: str | None = None,
                threads: int | None = 1, max_trials: int | None = None, seed_from: Table | None = None,
                output: Path | None = None, save_every: int = 10, console: Console | None = None) -> Table:
    """Train the grid configs no trial holds yet (at most ``max_trials`` in this call); return the table so far.

    ``threads`` sets torch's CPU threads per process: on a small CPU, several one-thread builders
    on the same storage finish the grid sooner than one builder with all the threads. ``seed_from``
    is a partial table file of the same recipe: a new study starts with its rows instead of
    training them again (so a committed partial table continues on a fresh checkout). The table
    is written to ``output`` every ``save_every`` configs and when the build stops, interrupted or not.
    """
    console = console or Console(stderr=True, soft_wrap=True)
    setup = training_setup(spec, threads)
    configs = list(spec.grid.iter_pool())
    sampler = ShuffledGridSampler(configs, seed=None)  # each worker its own draw order
    study = open_study(study_name or spec.name, storage=storage, sampler=sampler, direction=setup.direction,
                       attrs={"table": spec.recipe()})
    if seed_from is not None and not study.get_trials(deepcopy=False):
        _import_rows(study, seed_from, spec, sampler)
    objective = LoraObjective(spec.grid, setup.splits, model=setup.model, proxy_fraction=spec.proxy_fraction,
                              settings=setup.settings, seed=spec.seed)
    done = len(_rows_by_index(study, sampler))
    console.print(f"Table {spec.name}: {done} of {len(configs)} configs finished; "
                  f"{len(sampler.untaken(study))} not started.")
    progress = _Progress(console, sampler, done)

    def save(study: optuna.Study, trial: FrozenTrial | None = None) -> None:
        if output is not None and (trial is None or progress.count % save_every == 0):
            export_table(study, spec, setup.metric_name).save(output)

    ran = 0
    try:
        while (untaken := len(sampler.untaken(study))) and (max_trials is None or ran < max_trials):
            batch = untaken if max_trials is None else min(max_trials - ran, untaken)
            ran += run_trials(study, objective, len(counted_trials(study)) + batch, callbacks=[progress, save])
    finally:
        save(study)
    return export_table(study, spec, setup.metric_name)


def _import_rows(study: optuna.Study, table: Table, spec: TableSpec, sampler: ShuffledGridSampler) -> None:
    """Add a table file's rows to an empty study as finished trials, grid index and all."""
    if table.recipe != spec.recipe():
        raise InputError("table", f"table {table.name} was built with a different recipe than {spec.name}; "
                         "pick another output file")
    distributions = spec.grid.distributions()
    for row in table.rows:
        complete = row["state"] == "COMPLETE"
        user_attrs = {key: row[key] for key in ("eval_loss", "trajectory", "step_losses", "train_seconds")}
        if not complete:
            user_attrs["fail_reason"] = row["fail_reason"]
        study.add_trial(optuna.trial.create_trial(
            params=row["params"], distributions=distributions, value=row["metric"] if complete else None,
            state=TrialState.COMPLETE if complete else TrialState.FAIL,
            user_attrs={**user_attrs, "metric_name": table.metric_name, "imported_from": table.name},
            system_attrs={GRID_INDEX: sampler.index_of(row["params"])},
        ))


class _Progress:
    """One line per finished config: how many are done, its score, and the time left.

    The time left uses the rate at which the whole study gains rows, so it counts every worker that
    shares the storage, not only this process.
    """

    def __init__(self, console: Console, sampler: ShuffledGridSampler, done_at_start: int):
        self.console, self.sampler, self.total = console, sampler, len(sampler)
        self.started, self.count, self.done_at_start = time.perf_counter(), 0, done_at_start

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.count += 1
        done = len(_rows_by_index(study, self.sampler))
        elapsed = time.perf_counter() - self.started
        rate = max(1, done - self.done_at_start) / elapsed  # rows per second, all workers
        left = max(0, self.total - done) / rate / 3600
        outcome = f"{trial.value:.4f}" if trial.state == TrialState.COMPLETE else (
            f"FAIL ({trial.user_attrs.get('fail_reason', '?')})")
        self.console.print(f"[{done}/{self.total}] {outcome} {trial.params} ({elapsed / self.count:.1f} s per "
                           f"config here; about {left:.1f} h left at the rate of all workers)")


def _rows_by_index(study: optuna.Study, sampler: ShuffledGridSampler) -> dict[int, FrozenTrial]:
    """The trial that stands for each grid config: the first one that finished for a reason of its own.

    Interrupted trials and trials failed by a stale heartbeat (no reason recorded) are queued again
    and do not count; a repeat of an already finished config (a race between workers) is ignored.
    """
    rows: dict[int, FrozenTrial] = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        index = sampler.trial_index(t)
        if index is None or index in rows or not t.state.is_finished():
            continue
        if t.state == TrialState.FAIL and (t.user_attrs.get(INTERRUPTED) or "fail_reason" not in t.user_attrs):
            continue
        rows[index] = t
    return rows


def export_table(study: optuna.Study, spec: TableSpec, metric_name: str) -> Table:
    """The finished rows of a table study, with the recipe that produced them."""
    rows = []
    sampler = ShuffledGridSampler(list(spec.grid.iter_pool()))
    for t in sorted(_rows_by_index(study, sampler).values(), key=lambda t: t.number):
        complete = t.state == TrialState.COMPLETE
        seconds = t.user_attrs.get("train_seconds") or (t.datetime_complete - t.datetime_start).total_seconds()
        rows.append({
            "params": dict(t.params),
            "state": t.state.name,
            "metric": t.value if complete else None,
            "eval_loss": t.user_attrs.get("eval_loss"),
            "trajectory": t.user_attrs.get("trajectory", []),
            "step_losses": t.user_attrs.get("step_losses", []),
            "train_seconds": round(seconds, 2),
            "fail_reason": None if complete else t.user_attrs.get("fail_reason", t.state.name),
        })
    return Table(name=spec.name, recipe=spec.recipe(), metric_name=metric_name,
                 direction=study.direction.name.lower(), rows=rows)


def choose_full_configs(table: Table, count: int) -> list[dict[str, Any]]:
    """``count`` completed configs spread evenly over the table's quality range (by rank of the proxy metric)."""
    complete = sorted((r for r in table.rows if r["metric"] is not None), key=lambda r: r["metric"])
    if count < 3:
        raise InputError("configs", f"need at least 3 configs for a correlation, got {count}")
    if len(complete) < count:
        raise InputError("configs", f"the table has {len(complete)} completed rows, fewer than {count}")
    positions = np.unique(np.round(np.linspace(0, len(complete) - 1, count)).astype(int))
    return [{**complete[i]["params"], **table.grid.fixed} for i in positions]


def build_full_runs(table: Table, spec: TableSpec, count: int, *, storage: str | None = None,
                    study_name: str | None = None, threads: int | None = 1,
                    console: Console | None = None) -> Table:
    """Train ``count`` configs of the table on the whole training split; add the results to the table's rows.

    The configs are chosen once, when the study is created, and stored with it, so a resumed run trains
    the same ones even if the table has grown since.
    """
    console = console or Console(stderr=True, soft_wrap=True)
    setup = training_setup(spec, threads)
    name = study_name or spec.name + FULL_SUFFIX
    store = make_storage(storage)
    stored = {s.study_name: s.user_attrs for s in store.get_all_studies()}.get(name, {})
    fresh = choose_full_configs(table, count)  # checks count even when resuming
    chosen = stored.get("configs") or fresh
    sampler = ShuffledGridSampler(chosen)
    study = open_study(name, storage=store, sampler=sampler, direction=setup.direction,
                       attrs={"table": spec.recipe(), "configs": chosen})
    objective = LoraObjective(spec.grid, setup.splits, model=setup.model, proxy_fraction=1.0,
                              settings=setup.settings, seed=spec.seed)
    progress = _Progress(console, sampler, len(_rows_by_index(study, sampler)))
    while sampler.untaken(study):
        run_trials(study, objective, len(counted_trials(study)) + len(sampler.untaken(study)), callbacks=[progress])
    full = _rows_by_index(study, sampler)
    for row in table.rows:
        trial = full.get(sampler.index_of(row["params"]))
        if trial is not None:
            row["full"] = {"metric": trial.value if trial.state == TrialState.COMPLETE else None,
                           "eval_loss": trial.user_attrs.get("eval_loss"),
                           "train_seconds": round(trial.user_attrs.get("train_seconds", 0.0), 2),
                           "train_examples": len(setup.splits.train),
                           "fail_reason": trial.user_attrs.get("fail_reason")}
    return table

