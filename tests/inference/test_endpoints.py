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


def claimed(server: BillingServer) -> float:
    """What the server says it billed, at arith-lm's price ($0.5 / $1 per 1K prompt / completion tokens)."""
    return sum(b["prompt_tokens"] * 0.5 + b["completion_tokens"] for b in server.billed) / 1000


@pytest.mark.parametrize(("mode", "why"), [("negative_usage", "reported negative usage"),
                                           ("huge_usage", "reported usage above what the request allows")])
def test_lying_usage_stops_the_search_after_the_first_reply_counted_as_claimed(tmp_path, mode, why):
    with BillingServer(mode) as server:
        results = tune_inference(config(tmp_path, server.url, concurrency=1))
    assert len(server.billed) == 1  # no call after the first misreported one, and no test split
    assert results.stopped == "endpoint" and why in results.error and results.warnings == [results.error]
    assert results.trials == {"FAIL": 1} and results.best is None and "test_real" not in results.spend
    if mode == "huge_usage":
        assert results.spend["real"] == pytest.approx(claimed(server)) and results.spend["real"] > 1000
    else:  # a negative claim counts the call's worst case, above zero
        assert 0 < results.spend["real"] <= 0.3


def test_an_endpoint_that_bills_50x_stops_the_search_exits_1_and_results_say_why(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    with BillingServer("overbill") as server:
        args = ["lmtune", "infer", "--endpoint", server.url, "--models", "arith-lm", "--inference-budget", "0.02",
                "--optimization-budget", "1.0", "--task-size", "40", "--concurrency", "1",
                "--storage", f"sqlite:///{tmp_path / 'e.db'}", "--output-dir", str(out)]
        monkeypatch.setattr(sys, "argv", args)
        with pytest.raises(SystemExit) as exit_:
            main()
    assert exit_.value.code == 1
    (billed,) = server.billed  # the first reply stopped the search; the test split was never asked
    assert billed["completion_tokens"] == 50 * billed["n"] * billed["max_tokens"]
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()[-1]
    assert err.startswith("error: endpoint: arith-lm reported usage above what the request allows (")
    assert f"{billed['completion_tokens']} completion tokens of at most {billed['n'] * billed['max_tokens']}" in err
    written = json.loads((out / "results.json").read_text())
    assert written["stopped"] == "endpoint" and written["warnings"] == [written["error"]]
    assert written["spend"]["real"] == pytest.approx(claimed(server))  # what the server claimed, never less
    assert f"spent ${written['spend']['real']:.6g} of $1" in captured.out


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
