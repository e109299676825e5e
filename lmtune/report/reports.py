"""``write_reports``: the report pages of one, several or all studies of a storage."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from pydantic import BaseModel, ConfigDict, Field

from lmtune.config import build_config, check_writable_folder
from lmtune.results import Result
from lmtune.runtime.storage import STORAGE_HELP, make_storage
from lmtune.runtime.study import find_study

log = logging.getLogger(__name__)
#: The id under which the cost/quality front is stored for optuna-dashboard (rewritten, never duplicated).
DASHBOARD_FRONT_ID = "lmtune-cost-quality-front"


class ReportConfig(BaseModel):
    """Everything ``lmtune report`` takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    storage: str | None = Field(None, description=STORAGE_HELP, json_schema_extra={"metavar": "URL"})
    study: list[str] = Field(default_factory=list, description="study to report; repeat for several (default: "
                             "every study in the storage)", json_schema_extra={"flags": ["--study", "--study-name"],
                                                                               "metavar": "NAME"})
    output_dir: Path = Field(Path("lmtune-out/reports"), description="where the pages go, one <study>.html each")


@dataclass
class ReportResult(Result):
    """The pages written, by study name."""

    pages: dict[str, str] = field(default_factory=dict)


def write_reports(config: ReportConfig | None = None, **fields: Any) -> ReportResult:
    """Write ``output_dir/<study>.html`` for each study asked for (all of the storage by default)."""
    from lmtune.report.page import write_report

    cfg = config or build_config(ReportConfig, **fields)
    check_writable_folder(cfg.output_dir, "output_dir")
    storage = make_storage(cfg.storage, existing=True)
    names = cfg.study or sorted(s.study_name for s in storage.get_all_studies())
    for name in names:  # every name is checked before any page is written
        find_study(storage, name, cfg.storage)
    result = ReportResult()
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        path = write_report(study, cfg.output_dir / f"{_file_name(name)}.html")
        result.pages[name] = str(path)
        log.info("Wrote %s", path)
    return result


def report_study(storage: str | None, study_name: str, path: Path, *, dashboard: bool = False) -> Path | None:
    """Write one study's page to ``path`` (what ``lmtune lora`` and ``lmtune infer`` do after their run); with
    ``dashboard``, also store its cost/quality front for optuna-dashboard. The run's results are written by then,
    so a page that cannot be made is a logged warning and None, not a lost run."""
    from lmtune.report.page import write_report

    try:
        study = optuna.load_study(study_name=study_name, storage=make_storage(storage, existing=True))
        if dashboard:
            publish_to_dashboard(study)
        return write_report(study, path)
    except Exception as error:  # any failure here must not hide the results already written
        log.warning("no report written: %s: %s; `lmtune report` can write it later", type(error).__name__, error)
        return None


def publish_to_dashboard(study: optuna.Study) -> bool:
    """Store an inference study's cost/quality front where optuna-dashboard shows it (its public
    ``save_plotly_graph_object``), when optuna-dashboard is installed; True if stored.

    The study itself stays single-objective (quality, searched under a cost budget as EcoOptiGen does); the
    cost per instance is the ``cost_per_instance`` user attribute, which the dashboard also lists and plots.
    """
    from lmtune.report.figures import cost_quality
    from lmtune.report.page import INFER_ATTR, metric_of

    infer = study.user_attrs.get(INFER_ATTR)
    if not infer:
        return False
    try:
        from optuna_dashboard import save_plotly_graph_object
    except ImportError:
        return False
    figure, _ = cost_quality(study, metric_of(study), infer.get("inference_budget"))
    if figure is None:
        return False
    figure.update_layout(title=f"lmtune: cost and {metric_of(study)} of each config",
                         margin={"t": 60})
    save_plotly_graph_object(study, figure, graph_object_id=DASHBOARD_FRONT_ID)
    return True


def _file_name(study_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", study_name).strip("._") or "study"
