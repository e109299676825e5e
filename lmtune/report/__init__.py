"""``lmtune report``: one self-contained HTML page per study (plotly), and the cost/quality front for
optuna-dashboard.

``lmtune lora`` and ``lmtune infer`` write ``report.html`` next to their results; ``lmtune report`` writes the
page of any study in any storage (it only reads the storage). ``lmtune infer`` also stores its cost/quality
front for optuna-dashboard when that is installed (``publish_to_dashboard``).
"""

from lmtune.report.page import build_page, write_report
from lmtune.report.reports import ReportConfig, ReportResult, publish_to_dashboard, write_reports

__all__ = ["ReportConfig", "ReportResult", "build_page", "publish_to_dashboard", "write_report", "write_reports"]
