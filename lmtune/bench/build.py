"""Build a benchmark table: train every grid config through one Optuna study, then export the rows.

The study is the table under construction. It lives in any Optuna storage, so a build resumes after
an interruption and several processes or machines can fill one table together: each draws configs
that no trial holds yet (``ShuffledGridSampler``), so a half-built table is a uniform sample of the grid.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from lmtune import attrs
from lmtune.bench.config import BuildTableConfig
from lmtune.bench.specs import TableSpec, load_table_spec
from lmtune.bench.table import Table
from lmtune.config import build_config, check_writable_folder
from lmtune.errors import InputError
from lmtune.finetune.data import DatasetSplits, load_dataset
from lmtune.finetune.objective import LoraObjective
from lmtune.finetune.peft_model import check_model
from lmtune.finetune.train import TrainSettings, metric_direction, metric_name
from lmtune.llm import resolve_model
from lmtune.runtime.loop import TrialListener, run_trials
from lmtune.runtime.storage import make_storage
from lmtune.runtime.study import open_study
from lmtune.runtime.trials import counted_trials
from lmtune.samplers.grid import ShuffledGridSampler

log = logging.getLogger(__name__)

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
    name = spec.metric or metric_name(splits.task, settings)
    return TrainingSetup(splits, model, settings, name, metric_direction(name))


def build(config: BuildTableConfig | None = None, *, listener: TrialListener | None = None, **fields: Any) -> Table:
    """``lmtune bench build-table``: build (or continue) a table, then its full-split runs; save and return it."""
    cfg = config or build_config(BuildTableConfig, **fields)
    spec = load_table_spec(cfg.table)
    output = cfg.output or Path("benchmarks/data") / f"{spec.name}.json.gz"
    check_writable_folder(output.parent, "output")
    seed_from = Table.load(output) if output.exists() else None
    result = build_table(spec, storage=cfg.storage, study_name=cfg.study_name, threads=cfg.threads,
                         max_trials=cfg.max_trials, seed_from=seed_from, output=output, listener=listener)
    if cfg.full_runs and result.complete:
        result = build_full_runs(result, spec, cfg.full_runs, storage=cfg.storage, threads=cfg.threads,
                                 listener=listener)
    elif cfg.full_runs:
        log.warning("Full runs wait for the whole grid (%d of %d built).", len(result.rows), result.grid.pool_size)
    result.save(output)
    return result


def build_table(spec: TableSpec, *, storage: str | None = None, study_name: str | None = None,
                threads: int | None = 1, max_trials: int | None = None, seed_from: Table | None = None,
                output: Path | None = None, save_every: int = 10, listener: TrialListener | None = None) -> Table:
    """Train the grid configs no trial holds yet (at most ``max_trials`` in this call); return the table so far.

    ``threads`` sets torch's CPU threads per process: on a small CPU, several one-thread builders
    on the same storage finish the grid sooner than one builder with all the threads. ``seed_from``
    is a partial table file of the same recipe: a new study starts with its rows instead of
    training them again (so a committed partial table continues on a fresh checkout). The table
    is written to ``output`` every ``save_every`` configs and when the build stops, interrupted or not.
    """
    setup = training_setup(spec, threads)
    configs = list(spec.grid.iter_pool())
    sampler = ShuffledGridSampler(configs, seed=None)  # each worker its own draw order
    study = open_study(study_name or spec.name, storage=storage, sampler=sampler, direction=setup.direction,
                       attrs={attrs.TABLE: spec.recipe()}, metric_names=[setup.metric_name])
    if seed_from is not None and not study.get_trials(deepcopy=False):
        _import_rows(study, seed_from, spec, sampler)
    objective = LoraObjective(spec.grid, setup.splits, model=setup.model, proxy_fraction=spec.proxy_fraction,
                              settings=setup.settings, seed=spec.seed, metric=spec.metric,
                              progress=listener.step if listener is not None else None)
    done = len(_rows_by_index(study, sampler))
    log.info("Table %s: %d of %d configs finished; %d not started.", spec.name, done, len(configs),
             len(sampler.untaken(study)))
    saver = _Saver(listener, lambda: output is not None and export_table(study, spec, setup.metric_name).save(output),
                   save_every)
    ran = 0
    try:
        while (untaken := len(sampler.untaken(study))) and (max_trials is None or ran < max_trials):
            batch = untaken if max_trials is None else min(max_trials - ran, untaken)
            ran += run_trials(study, objective, len(counted_trials(study)) + batch, listener=saver)
    finally:
        saver.save()
    return export_table(study, spec, setup.metric_name)


def _import_rows(study: optuna.Study, table: Table, spec: TableSpec, sampler: ShuffledGridSampler) -> None:
    """Add a table file's rows to an empty study as finished trials, grid index and all."""
    if not table.built_with(spec.recipe()):
        raise InputError("table", f"table {table.name} was built with a different recipe than {spec.name}; "
                         "pick another output file")
    distributions = spec.grid.distributions()
    for row in table.rows:
        complete = row["state"] == "COMPLETE"
        user_attrs = {key: row[key] for key in (attrs.EVAL_LOSS, attrs.TRAJECTORY, attrs.STEP_LOSSES,
                                                attrs.TRAIN_SECONDS)}
        if not complete:
            user_attrs[attrs.FAIL_REASON] = row["fail_reason"]
        study.add_trial(optuna.trial.create_trial(
            params=row["params"], distributions=distributions, value=row["metric"] if complete else None,
            state=TrialState.COMPLETE if complete else TrialState.FAIL,
            user_attrs={**user_attrs, attrs.METRIC_NAME: table.metric_name, attrs.IMPORTED_FROM: table.name},
            system_attrs={attrs.GRID_INDEX: sampler.index_of(row["params"])},
        ))


class _Saver(TrialListener):
    """Passes every event on to ``listener`` and saves the table every ``every`` finished configs."""

    def __init__(self, listener: TrialListener | None, save, every: int):
        self.listener, self.save, self.every, self.count = listener or TrialListener(), save, every, 0

    def study_opened(self, study, total):
        self.listener.study_opened(study, total)

    def trial_started(self, trial):
        self.listener.trial_started(trial)

    def step(self, step, total):
        self.listener.step(step, total)

    def waiting(self, state):
        self.listener.waiting(state)

    def trial_done(self, study, trial):
        self.listener.trial_done(study, trial)
        self.count += 1
        if self.count % self.every == 0:
            self.save()


class RowProgress:
    """How a finished config reads in the progress line: its score, and the time left to finish the grid.

    The time left uses the rate at which the whole study gains rows, so it counts every worker that
    shares the storage, not only this process.
    """

    def __init__(self):
        self.started, self.count, self.done_at_start = time.perf_counter(), 0, None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> str:
        sampler = _grid_sampler(study)
        done = len(_rows_by_index(study, sampler))
        if self.done_at_start is None:
            self.done_at_start = done - 1
        self.count += 1
        elapsed = time.perf_counter() - self.started
        rate = max(1, done - self.done_at_start) / elapsed  # rows per second, all workers
        left = max(0, len(sampler) - done) / rate / 3600
        outcome = f"{trial.value:.4f}" if trial.state == TrialState.COMPLETE else (
            f"FAIL ({trial.user_attrs.get(attrs.FAIL_REASON, '?')})")
        return (f"row {done}/{len(sampler)}: {outcome} {trial.params} ({elapsed / self.count:.1f} s per config "
                f"here; about {left:.1f} h left at the rate of all workers)")


def _grid_sampler(study: optuna.Study) -> ShuffledGridSampler:
    """The grid of a table study (its recipe's grid, or the chosen configs of a full-runs study)."""
    configs = study.user_attrs.get(attrs.CHOSEN_CONFIGS)
    if configs is None:
        from lmtune.space import SearchSpace

        configs = list(SearchSpace.from_stored(study.user_attrs[attrs.TABLE]["grid"]).iter_pool())
    return ShuffledGridSampler(configs)


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
        reason = t.user_attrs.get(attrs.FAIL_REASON)
        if t.state == TrialState.FAIL and (t.user_attrs.get(attrs.INTERRUPTED) or reason is None):
            continue
        rows[index] = t
    return rows


def export_table(study: optuna.Study, spec: TableSpec, metric_name: str) -> Table:
    """The finished rows of a table study, with the recipe that produced them."""
    rows = []
    sampler = ShuffledGridSampler(list(spec.grid.iter_pool()))
    for t in sorted(_rows_by_index(study, sampler).values(), key=lambda t: t.number):
        complete = t.state == TrialState.COMPLETE
        seconds = t.user_attrs.get(attrs.TRAIN_SECONDS) or (t.datetime_complete - t.datetime_start).total_seconds()
        rows.append({
            "params": dict(t.params),
            "state": t.state.name,
            "metric": t.value if complete else None,
            "eval_loss": t.user_attrs.get(attrs.EVAL_LOSS),
            "trajectory": t.user_attrs.get(attrs.TRAJECTORY, []),
            "step_losses": t.user_attrs.get(attrs.STEP_LOSSES, []),
            "train_seconds": round(seconds, 2),
            "fail_reason": None if complete else t.user_attrs.get(attrs.FAIL_REASON, t.state.name),
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
                    listener: TrialListener | None = None) -> Table:
    """Train ``count`` configs of the table on the whole training split; add the results to the table's rows.

    The configs are chosen once, when the study is created, and stored with it, so a resumed run trains
    the same ones even if the table has grown since.
    """
    setup = training_setup(spec, threads)
    name = study_name or spec.name + FULL_SUFFIX
    store = make_storage(storage)
    stored = {s.study_name: s.user_attrs for s in store.get_all_studies()}.get(name, {})
    fresh = choose_full_configs(table, count)  # checks count even when resuming
    chosen = stored.get(attrs.CHOSEN_CONFIGS) or fresh
    sampler = ShuffledGridSampler(chosen)
    study = open_study(name, storage=store, sampler=sampler, direction=setup.direction,
                       attrs={attrs.TABLE: spec.recipe(), attrs.CHOSEN_CONFIGS: chosen},
                       metric_names=[setup.metric_name])
    objective = LoraObjective(spec.grid, setup.splits, model=setup.model, proxy_fraction=1.0,
                              settings=setup.settings, seed=spec.seed, metric=spec.metric,
                              progress=listener.step if listener is not None else None)
    while sampler.untaken(study):
        run_trials(study, objective, len(counted_trials(study)) + len(sampler.untaken(study)), listener=listener)
    full = _rows_by_index(study, sampler)
    for row in table.rows:
        trial = full.get(sampler.index_of(row["params"]))
        if trial is not None:
            row["full"] = {"metric": trial.value if trial.state == TrialState.COMPLETE else None,
                           "eval_loss": trial.user_attrs.get(attrs.EVAL_LOSS),
                           "train_seconds": round(trial.user_attrs.get(attrs.TRAIN_SECONDS, 0.0), 2),
                           "train_examples": len(setup.splits.train),
                           "fail_reason": trial.user_attrs.get(attrs.FAIL_REASON)}
    return table

