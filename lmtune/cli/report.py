"""``lmtune report``: a self-contained HTML page per study."""

from __future__ import annotations

from typing import Any

from lmtune.cli.app import app
from lmtune.cli.options import config_options
from lmtune.config import build_config
from lmtune.report.reports import ReportConfig


@app.command("report")
@config_options(ReportConfig)
def report_command(values: dict[str, Any] | None = None) -> None:
    """Write one HTML page per study: best so far, learning curves, parameter effects, parallel coordinates, failures,
    and for `lmtune infer` studies the cost/quality front. Opens offline in any browser."""
    from lmtune.report.reports import write_reports
    from lmtune.runtime.quiet import quiet_libraries

    cfg = build_config(ReportConfig, **values)
    quiet_libraries(transformers=False)
    for name, path in write_reports(cfg).pages.items():
        print(f"{name}: {path}")
