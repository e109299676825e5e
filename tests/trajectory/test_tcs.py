"""The Trajectory Context Summarizer on hand-made curves (one per flag), on a study with failures and running
trials, on benchmark rows (size of the text in tokens) and on inference trials; its report is byte-identical."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from lmtune import attrs
from lmtune.space import Categorical, Float, SearchSpace
from lmtune.trajectory import learned_sentences, report_text, summarize_curve, summarize_study

ROOT = Path(__file__).resolve().parents[2]


def records(evals: list[float], trains: list[float], accuracy: list[float] | None = None) -> list[dict]:
    out = []
    for i, (e, t) in enumerate(zip(evals, trains, strict=True)):
        record = {"step": 10 * (i + 1), "epoch": (i + 1) / len(evals), "train_loss": t, "eval_loss": e}
        if accuracy:
            record["accuracy"] = accuracy[i]
        out.append(record)
    return out


FALLING = [2.0 - 0.05 * i for i in range(20)]  # steady learning: 2.0 -> 1.05

CASES = {
    "diverged": (records([1.9, 3.5], [1.8, 4.0]), [1.6, 1.7, 2.0, 2.4, 2.9, 3.5, 4.2, 5.0]),
    "overfitting": (records([1.0, 0.8, 0.95], [1.1, 0.7, 0.4]), FALLING),
    "plateau": (records([1.5, 1.2, 1.195], [1.6, 1.3, 1.29]), FALLING),
    "still improving": (records([1.5, 1.2, 1.0], [1.6, 1.3, 1.1]), FALLING),
    "spiky": (records([1.5, 1.2, 1.0], [1.6, 1.3, 1.1]),
              [2.0, 1.9, 1.8, 1.7, 3.5, 1.6, 1.5, 1.45, 3.2, 1.4, 1.35, 1.3]),
    "underfitting": (records([1.61, 1.6, 1.6], [1.61, 1.61, 1.6]), [1.61, 1.6, 1.62, 1.6, 1.61, 1.6, 1.6, 1.61]),
}


@pytest.mark.parametrize("flag", sorted(CASES))
def test_each_flag_is_raised_by_its_own_curve_and_only_there(flag):
    trajectory, steps = CASES[flag]
    summary = summarize_curve(trajectory, steps, "eval_loss", maximize=False)
    assert flag in summary.flags
    others = {f for name, (t, s) in CASES.items() if name != flag
              for f in summarize_curve(t, s, "eval_loss", maximize=False).flags}
    assert flag not in others or flag in ("still improving",), (flag, others)  # spiky's curve also still improves


def test_non_finite_losses_and_a_divergence_reason_are_divergence():
    assert summarize_curve([], [1.0, float("nan")], "eval_loss", maximize=False).flags == ["diverged"]
    assert "diverged" in summarize_curve([], [], "eval_loss", False, failed_reason="diverged: loss 40 at step 3").flags


def test_curve_numbers_best_final_gap_and_trend():
    s = summarize_curve(records([1.0, 0.8, 0.95], [1.1, 0.7, 0.4], [0.5, 0.7, 0.65]), FALLING, "accuracy", True)
    assert (s.best_step, s.best_value, s.final_value) == (20, 0.7, 0.65)
    assert s.gap == pytest.approx(0.55) and s.gap_trend == "widening" and s.points == 3 and s.steps == 20


SPACE = SearchSpace((Categorical("rank", (4, 8, 16)), Categorical("learning_rate", (1e-4, 1e-3, 1e-2)),
                     Categorical("variant", ("lora", "dora"))), {}, "t")


def study_with_failures_and_running() -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    dists = SPACE.distributions()
    rows = [(4, 1e-4, "lora", 0.30, "underfitting"), (8, 1e-3, "lora", 0.60, "still improving"),
            (16, 1e-3, "dora", 0.70, "still improving"), (8, 1e-4, "dora", 0.35, "underfitting"),
            (16, 1e-4, "lora", 0.40, "plateau")]
    for rank, lr, variant, value, flag in rows:
        trajectory, steps = CASES[flag]
        study.add_trial(create_trial(params={"rank": rank, "learning_rate": lr, "variant": variant},
                                     distributions=dists, value=value,
                                     user_attrs={attrs.TRAJECTORY: trajectory, attrs.STEP_LOSSES: steps,
                                                 attrs.METRIC_NAME: "accuracy"}))
    study.add_trial(create_trial(params={"rank": 16, "learning_rate": 1e-2, "variant": "lora"}, distributions=dists,
                                 state=TrialState.FAIL, user_attrs={attrs.FAIL_REASON: "diverged: loss 31 at step 4",
                                                                    attrs.STEP_LOSSES: CASES["diverged"][1]}))
    running = study.ask(dists)
    assert running.params  # the config is held while it runs
    return study


def test_a_study_report_lists_best_effects_failures_running_and_untried():
    study = study_with_failures_and_running()
    report = summarize_study(study, space=SPACE)
    assert report["metric"] == "accuracy" and report["best"]["trial"] == 2
    assert report["counts"] == {"RUNNING": 1, "COMPLETE": 5, "FAIL": 1}
    assert report["failed"] == [{"trial": 5, "config": {"rank": 16, "learning_rate": 0.01, "variant": "lora"},
                                 "reason": "diverged: loss 31 at step 4"}]
    running = study.trials[6].params
    assert report["running"] == [{"trial": 6, "config": running}]
    assert report["params"]["learning_rate"]["effect"]["better"] == "higher"
    assert report["params"]["learning_rate"]["effect"]["strength"] == "strong"
    assert report["params"]["variant"]["effect"]["best_mean"] == "dora"
    assert report["trials"][5]["curve"]["flags"] == ["diverged"]
    assert report["untried"] == {}  # every value was used by some trial (the failed and the running one count)
    wider = SearchSpace((Categorical("rank", (4, 8, 16, 32)), *SPACE.params[1:]), {}, "wider")
    assert summarize_study(study, space=wider)["untried"] == {"rank": ["32"]}
    assert report["pool"] == {"size": 18, "tried": 7}
    text = report_text(report)
    assert "5: 16,0.01,lora -> FAIL diverged: loss 31 at step 4" in text
    assert f"Running now (do not propose these): trial 6 rank={running['rank']}" in text
    assert "learning_rate: higher is better, strong" in text
    sentences = " ".join(learned_sentences(report))
    assert "learning_rate mattered most: higher values scored better" in sentences
    assert "For variant, dora scored best on average" in sentences
    assert "Trial 5 diverged" in sentences and "1 trial failed: trial 5 (diverged" in sentences
    assert "Trials 1 and 2 were still improving" in sentences


def test_the_report_is_byte_identical_across_runs_and_processes():
    def render() -> str:
        report = summarize_study(study_with_failures_and_running(), space=SPACE)
        return json.dumps(report, sort_keys=True) + report_text(report)

    here = render()
    assert here == render()
    code = ("import json, sys; sys.path.insert(0, 'tests/trajectory'); sys.path.insert(0, '.');"
            "from test_tcs import render_for_subprocess; sys.stdout.write(render_for_subprocess())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert out.stdout == here


def render_for_subprocess() -> str:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    report = summarize_study(study_with_failures_and_running(), space=SPACE)
    return json.dumps(report, sort_keys=True) + report_text(report)


@pytest.mark.parametrize("name", ["bbc-minilm", "arith-sft"])
def test_thirty_benchmark_rows_fit_in_about_1500_tokens(name, tokenizer):
    """Counted with the offline MiniLM WordPiece tokenizer, which splits numbers finely (an upper estimate)."""
    from lmtune.bench.table import Table

    table = Table.load(ROOT / "benchmarks" / "data" / f"{name}.json.gz")
    study = optuna.create_study(direction=table.direction)
    for row in random.Random(0).sample(table.rows, 30):
        study.add_trial(create_trial(params=row["params"], distributions=table.grid.distributions(),
                                     value=row["metric"], user_attrs={
                                         attrs.TRAJECTORY: row["trajectory"], attrs.STEP_LOSSES: row["step_losses"],
                                         attrs.METRIC_NAME: table.metric_name}))
    text = report_text(summarize_study(study, space=table.grid))
    tokens = len(tokenizer(text, truncation=False)["input_ids"])
    assert 800 < tokens <= 1650, tokens
    assert text.count("\n") >= 30 + 5  # every trial has its line


def test_inference_trials_report_cost_and_quality_without_curves():
    space = SearchSpace((Categorical("model", ("a", "b")), Float("temperature", 0.0, 2.0)), {}, "infer")
    study = optuna.create_study(direction="maximize")
    for i, (model, temperature, quality, cost) in enumerate([("a", 0.2, 0.5, 0.001), ("b", 1.5, 0.7, 0.004),
                                                             ("a", 1.2, 0.55, 0.0012), ("b", 0.1, 0.8, 0.0035)]):
        study.add_trial(create_trial(params={"model": model, "temperature": temperature}, value=quality,
                                     distributions=space.distributions(),
                                     user_attrs={attrs.COST_PER_INSTANCE: cost, "n": i}))
    report = summarize_study(study)  # the space is read from the trials' distributions
    assert list(report["space"]) == ["model", "temperature"] and "curve" not in report["trials"][0]
    assert report["trials"][1]["cost"] == 0.004
    text = report_text(report)
    assert "1: b,1.5 -> 0.7; cost 0.004" in text
    assert report["untried"] == {"temperature": ["0.5..1"]}
