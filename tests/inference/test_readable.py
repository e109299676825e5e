"""What ``lmtune infer`` leaves for people: a named metric, templates and stops as text, cost per instance on every
scored trial, a warning with a budget to try when the best config solves nothing, a report, and the cost/quality
front for optuna-dashboard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lmtune import attrs
from lmtune.cli.options import as_flags, flags_of
from lmtune.inference.config import InferConfig
from tests.report.chromium import render


def lmtune(*args: str, cwd: Path) -> str:
    """Run the command as a user does; returns what it printed (stdout, then stderr)."""
    result = subprocess.run([sys.executable, "-m", "lmtune.cli", *args], cwd=cwd, capture_output=True, text=True,
                            timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def starved(tmp_path_factory):
    """arith-lm under a per-instance budget that admits only 2-token answers, which no 3-digit sum fits."""
    folder = tmp_path_factory.mktemp("starved")
    output = lmtune("infer", "--local-model", "arith-lm", "--inference-budget", "0.0065", "--optimization-budget",
                    "0.6", "--task-size", "40", "--test-fraction", "0.5", "--max-tokens", "2,8", "--n", "1,2",
                    "--template", "{prompt}", "--template", "{prompt} ", "--stop", "\\n", "--stop", "none",
                    "--storage", f"sqlite:///{folder / 'infer.db'}", "--output-dir", str(folder / "out"), cwd=folder)
    study = optuna.load_study(study_name="infer-arith-add3", storage=f"sqlite:///{folder / 'infer.db'}")
    return folder, output, study


def test_metric_is_named_and_templates_and_stops_are_stored_as_text(starved):
    _, _, study = starved
    assert study.metric_names == ["success"]
    ran = [t for t in study.trials if attrs.TOKEN_KEY in t.user_attrs]
    assert ran
    for trial in ran:
        assert trial.user_attrs[attrs.TEMPLATE_TEXT] == ["{prompt}", "{prompt} "][trial.params["template"]]
        assert trial.user_attrs[attrs.STOP_TEXT] == ["\\n", "none"][trial.params["stop"]]
    scored = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert scored and all(t.user_attrs[attrs.COST_PER_INSTANCE] <= 0.0065 for t in scored)


def test_a_best_config_that_solves_nothing_is_flagged_and_a_budget_suggested(starved):
    folder, output, study = starved
    results = json.loads((folder / "out" / "results.json").read_text())
    assert results["best"]["tuning"]["quality"] == 0.0 and results["best"]["solved_nothing"]
    over = sorted(cost for t in study.trials if t.state == TrialState.PRUNED and not t.user_attrs.get(attrs.INFERRED)
                  and (cost := t.user_attrs[attrs.COST_PER_INSTANCE]) > 0.0065 * (1 + 1e-9))
    assert over, "some config must have been measured over the per-instance budget"
    (warning,) = results["warnings"]
    suggested = float(warning.split("try `inference_budget` ")[1].split()[0])  # the field, in stored text
    assert 0.0065 < over[0] <= suggested < over[0] * 1.1  # admits the cheapest config measured above the budget
    assert "--" not in warning
    assert as_flags(warning, flags_of(InferConfig)) in output  # logged as a warning, on the terminal, naming the flag
    assert f"try --inference-budget {suggested:g} " in output
    assert "solved nothing: no instance answered correctly" in output  # the trial lines say it too


def test_report_and_dashboard_show_the_cost_quality_front(starved):
    folder, output, study = starved
    page = folder / "out" / "report.html"
    assert f"report: {page}" in output
    checked = render(page)
    assert checked["errors"] == [] and checked["figures"] == checked["drawn"] >= 2
    assert "solved nothing" in page.read_text()
    pytest.importorskip("optuna_dashboard")  # the front is stored for the dashboard when it is installed
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder / 'infer.db'}")
    (summary,) = storage.get_all_studies()
    assert any(key.startswith("dashboard:plot_data:lmtune-cost-quality-front") for key in summary.system_attrs)


def test_the_terminal_shows_no_library_warnings(starved):
    """No FutureWarning (``past_key_values``, ``is_gradient_checkpointing``) or other library warning among the
    lines ``lmtune infer`` printed: only lmtune's own (``warning: ...``)."""
    _, output, _ = starved
    assert "Warning" not in output and "warnings.warn" not in output
