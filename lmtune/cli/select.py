"""``lmtune select`` and ``lmtune bench select``: which base model to fine-tune."""

from __future__ import annotations

from typing import Any

import typer

from lmtune.cli.app import app, bench_app, console
from lmtune.cli.options import as_flags, config_options
from lmtune.config import build_config
from lmtune.errors import InputError
from lmtune.selection.config import BenchSelectConfig, SelectConfig


@app.command("select", context_settings={"allow_extra_args": True})
@config_options(SelectConfig)
def select_command(ctx: typer.Context, values: dict[str, Any] | None = None) -> None:
    """Choose the model to fine-tune: rank candidates with ZeroShot, SubTuning, ModelSize, AtS, ats-median, ats-guard
    (the default ranking) and fitted scaling laws, from a curves file or from curves measured here (--models A B C
    --dataset --sizes)."""
    from lmtune.cli.progress import log_to
    from lmtune.runtime.quiet import quiet_libraries
    from lmtune.selection.select import choose_model

    extra = list(ctx.args)  # --models A B C: click takes A, the rest arrive as extra arguments
    if extra and not values.get("models"):
        raise InputError("models", f"unexpected arguments {' '.join(extra)}")
    if extra:
        values["models"] = [*values["models"], *extra]
    cfg = build_config(SelectConfig, **values)
    quiet_libraries()
    log_to(console)
    print(as_flags(choose_model(cfg).text), end="")


@bench_app.command("select")
@config_options(BenchSelectConfig)
def select_bench_command(values: dict[str, Any] | None = None) -> None:
    """The model-selection paper table: PearCorr, RelAcc and compute of every method at every budget ratio; with
    --protocol lodo and several --curves, leave-one-dataset-out held-out scores."""
    from lmtune.selection.bench import bench_select

    cfg = build_config(BenchSelectConfig, **values)
    table = bench_select(cfg)
    print(table if cfg.as_json else as_flags(table))
