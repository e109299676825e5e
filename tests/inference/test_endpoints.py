"""Endpoints that misbehave (HTTP 200 with invalid JSON or an HTML page, no answer at all, lying usage, HTTP 500
on every call): each ends as FAIL trials with their reasons or as a one-line error, in bounded time, with spend
never negative and never above the budget."""

from __future__ import annotations

import json
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from lmtune.cli import main
from lmtune.inference.config import InferConfig
from lmtune.inference.tuner import MAX_CONSECUTIVE_FAILURES, tune_inference
from tests.servers import BillingServer


def config(tmp_path, url, **kw) -> InferConfig:
    base = dict(endpoint=url, models=["arith-lm"], inference_budget=0.02, optimization_budget=0.3, task_size=20,
                test_fraction=0.5, max_tokens=(2, 8), n=(1, 4), retries=0, timeout=30.0, test_pareto=False,
                storage=f"sqlite:///{tmp_path / 'e.db'}", output_dir=tmp_path / "out")
    return InferConfig(**{**base, **kw})


def trials(tmp_path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="infer-arith-add3", storage=f"sqlite:///{tmp_path / 'e.db'}").get_trials()


@pytest.mark.parametrize(("mode", "reason"), [
    ("invalid_json", "answered something that is not a completion: JSONDecodeError"),
    ("html", "answered something that is not a completion (no list of choices): '<html>"),
    ("never", "no answer within 0.5 s"),
])
def test_a_broken_endpoint_fails_trials_with_their_reason_and_stops(tmp_path, mode, reason):
    start = time.monotonic()
    with BillingServer(mode) as server:
        results = tune_inference(config(tmp_path, server.url, timeout=0.5 if mode == "never" else 30.0))
    assert time.monotonic() - start < 30
    assert results.stopped == "endpoint" and reason in results.error and results.best is None
    stored = trials(tmp_path)
    assert stored and all(t.state == TrialState.FAIL for t in stored)
    assert all(reason in t.user_attrs["fail_reason"] or "budget exhausted" in t.user_attrs["fail_reason"]
               for t in stored)
    # each call may have been billed (the server answered, or may answer later): counted at its worst case
    assert 0 < results.spend["real"] <= 0.3 and results.spend["unsettled"] == pytest.approx(results.spend["real"])
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["stopped"] == "endpoint" and reason in written["error"]


def test_lying_usage_is_clamped_to_what_the_request_could_bill(tmp_path):
    with BillingServer("negative_usage") as server:
        negative = tune_inference(config(tmp_path, server.url, max_trials=3, study_name="negative"))
    assert negative.spend["real"] == 0.0 and negative.trials == {"COMPLETE": 3}  # never below zero
    with BillingServer("huge_usage") as server:
        huge = tune_inference(config(tmp_path, server.url, study_name="huge"))
        told = sum(b["prompt_tokens"] * 0.5 + b["completion_tokens"] for b in server.billed) / 1000
    assert told > 1000  # what the server claims
    assert 0.25 < huge.spend["real"] <= 0.3 and huge.stopped == "budget"  # what lmtune counts: each call's bound


def test_http_500_on_every_call_exits_1_with_one_line_and_results_say_why(tmp_path, monkeypatch, capsys):
    with BillingServer("http500") as server:
        args = ["lmtune", "infer", "--endpoint", server.url, "--models", "arith-lm", "--inference-budget", "0.02",
                "--optimization-budget", "0.3", "--task-size", "20", "--retries", "1",
                "--storage", f"sqlite:///{tmp_path / 'e.db'}", "--output-dir", str(tmp_path / "out")]
        monkeypatch.setattr(sys, "argv", args)
        with pytest.raises(SystemExit) as exit_:
            main()
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: endpoint: {MAX_CONSECUTIVE_FAILURES} trial(s) in a row failed; the last: "
                       f"{server.url}: gave up after 2 tries: Error code: 500 - boom")
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["stopped"] == "endpoint" and written["best"] is None
    assert written["trials"] == {"FAIL": MAX_CONSECUTIVE_FAILURES}
    assert written["spend"]["real"] == 0.0  # the server refused every call: nothing was billed
