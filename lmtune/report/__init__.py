"""``lmtune report``: one self-contained HTML page per study (plotly), and the cost/quality front for
optuna-dashboard.

``lmtune lora`` (``tune_lora``) and ``lmtune infer`` write ``report.html`` next to their results; ``lmtune report``
writes the page of any study in any storage (it only reads the storage). ``lmtune infer`` also stores its
cost/quality front for optuna-dashboard when that is installed (``publish_to_dashboard``). ``progress`` holds the
one line a finished trial reads as, on the terminal and in the log. Exports load on first use (the command line's
progress display imports ``progress`` without plotly).
"""

from lmtune._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "ReportConfig": "lmtune.report.reports",
    "ReportResult": "lmtune.report.reports",
    "publish_to_dashboard": "lmtune.report.reports",
    "write_reports": "lmtune.report.reports",
    "build_page": "lmtune.report.page",
    "write_report": "lmtune.report.page",
})
