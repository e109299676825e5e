"""``lmtune bench build-table``, ``bench show`` and ``bench samplers``: sampler comparisons on real result tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lmtune.bench.config import BenchSamplersConfig, BuildTableConfig
from lmtune.cli.app import bench_app, console
from lmtune.cli.options import config_options
from lmtune.config import build_config
from lmtune.runtime.quiet import quiet_libraries


@bench_app.command("build-table")
@config_options(BuildTableConfig)
def build_table_command(values: dict[str, Any] | None = None) -> None:
    """Train every config of a benchmark table's grid through one resumable Optuna study; write the table file."""
    from lmtune.bench.build import RowProgress, build
    from lmtune.cli.progress import TrialProgress

    cfg = build_config(BuildTableConfig, **values)
    quiet_libraries()
    with TrialProgress(console, describe=RowProgress()) as progress:
        result = build(cfg, listener=progress)
    summary = result.summary()
    output = cfg.output or Path("benchmarks/data") / f"{result.name}.json.gz"
    print(f"{output}: {summary['configs']} of {summary['grid']} configs, {summary['failed']} failed, "
          f"{summary['metric']} best {summary['best']:.4f} worst {summary['worst']:.4f}")


@bench_app.command("show")
def show_table_command(
    table: Annotated[list[Path], typer.Option(help="Table file(s); repeat for several.", metavar="FILE")],
) -> None:
    """Summarize tables: configs, failures, best/worst/median metric, proxy-to-full correlation, build hours."""
    from lmtune.bench.compare import table_summary_markdown
    from lmtune.bench.table import Table

    print(table_summary_markdown([Table.load(path) for path in table]))


@bench_app.command("samplers")
@config_options(BenchSamplersConfig)
def samplers_command(values: dict[str, Any] | None = None) -> None:
    """Replay search methods against real result tables (lookups, no training) and compare their regret."""
    from lmtune.bench.compare import bench_samplers

    cfg = build_config(BenchSamplersConfig, **values)
    quiet_libraries()
    print(bench_samplers(cfg))
    print(f"written: {cfg.output / 'samplers.md'}, {cfg.output / 'samplers.json'}, {cfg.output / 'samplers.png'}")
