"""``lmtune report``: one self-contained page per study, every plot drawn in headless Chromium without a JS error."""

import os
import subprocess
import sys

import optuna
import pytest
from markupsafe import escape
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from lmtune import attrs
from lmtune.report import build_page, write_report
from lmtune.runtime.study import open_study
from tests.report.chromium import render

CONSTANT = {"value": 0.25, "label": "learned nothing", "metric": "accuracy",
            "what": "no better than answering 'sport' for every example (the majority-class rate, 0.2500)"}


def trajectory(final: float, steps=(10, 20)) -> list[dict]:
    """Two evaluations, as a trial without a pruner makes (``PLAIN_EVALS``); the loss falls as accuracy rises."""
    return [{"step": s, "epoch": s / 20, "train_loss": 1.5 - 0.05 * s, "eval_loss": 1.6 - (final - 0.2) * s / 20,
             "accuracy": 0.25 + (final - 0.25) * s / steps[-1]} for s in steps]


def lora_study(storage: str, metric: str = "accuracy") -> optuna.Study:
    """A LoRA study as ``tune_lora`` leaves it: named metric (accuracy, maximized, or eval_loss, minimized: the
    default), trajectories and every step's training loss, a failure, a trial that learned nothing."""
    direction = "minimize" if metric == "eval_loss" else "maximize"
    study = open_study(f"lora-{metric}", storage=storage, direction=direction, metric_names=[metric],
                       attrs={"model": "minilm", attrs.SPACE: {"name": "lora-small"}, "proxy_fraction": 0.1,
                              "seed": 0}, info={"dataset": "bbc-news"})
    study.set_user_attr(attrs.JOB, {"command": "lora", "factory": "lmtune.lora.tune:worker_parts", "config": {}})
    study.set_user_attr(attrs.CONSTANT_SCORE, CONSTANT)
    space = {"rank": CategoricalDistribution([4, 8, 16]), "learning_rate": CategoricalDistribution([3e-4, 1e-3, 5e-3]),
             "dropout": CategoricalDistribution([0.0, 0.1])}
    configs = [(4, 3e-4, 0.0, 0.25), (8, 1e-3, 0.1, 0.61), (16, 5e-3, 0.0, 0.83), (8, 5e-3, 0.1, 0.79),
               (4, 1e-3, 0.1, 0.55), (16, 3e-4, 0.1, 0.31)]
    for rank, lr, dropout, accuracy in configs:
        records = trajectory(accuracy)
        study.add_trial(create_trial(params={"rank": rank, "learning_rate": lr, "dropout": dropout},
                                     distributions=space, value=records[-1][metric],
                                     user_attrs={attrs.TRAJECTORY: records, attrs.METRIC_NAME: metric,
                                                 attrs.STEP_LOSSES: [1.6 - accuracy * s / 20 for s in range(1, 21)]}))
    study.add_trial(create_trial(params={"rank": 16, "learning_rate": 5e-3, "dropout": 0.0}, distributions=space,
                                 state=TrialState.FAIL,
                                 user_attrs={attrs.FAIL_REASON: "diverged: loss 9.1 > 4 x initial 1.6 at step 7"}))
    return study


def infer_study(storage: str) -> optuna.Study:
    """An inference study as ``tune_inference`` leaves it: template/stop as indices plus their text, cost per
    instance, over-budget configs PRUNED with their estimated cost."""
    info = {"task": "arith-add3", "models": ["arith-lm"], "inference_budget": 0.02,
            "templates": ["{question}=", "Q: {question}\nA:"], "stops": [["\n"], None]}
    study = open_study("infer-demo", storage=storage, direction="maximize", metric_names=["success"],
                       attrs={"lmtune_infer": info}, info={attrs.CONSTANT_SCORE: {"value": 0.0,
                                                                                   "label": "solved nothing"}})
    study.set_user_attr(attrs.OPTIMIZATION_BUDGET, 1.0)
    space = {"model": CategoricalDistribution(["arith-lm"]), "template": CategoricalDistribution([0, 1]),
             "stop": CategoricalDistribution([0, 1]), "temperature": FloatDistribution(0.0, 2.0),
             "max_tokens": IntDistribution(2, 16, log=True), "n": IntDistribution(1, 16, log=True)}
    rows = [(0, 0, 1.0, 2, 1, 0.004, 0.0), (0, 0, 0.2, 8, 1, 0.006, 0.7), (1, 0, 0.7, 8, 2, 0.011, 0.81),
            (0, 1, 0.5, 8, 4, 0.017, 0.9), (1, 1, 0.9, 16, 2, 0.015, 0.72)]
    for template, stop, temperature, max_tokens, n, cost, quality in rows:
        study.add_trial(create_trial(
            params={"model": "arith-lm", "template": template, "stop": stop, "temperature": temperature,
                    "max_tokens": max_tokens, "n": n}, distributions=space, value=quality,
            user_attrs={attrs.COST_PER_INSTANCE: cost, attrs.SPEND: cost * 10,
                        attrs.TEMPLATE_TEXT: info["templates"][template], attrs.STOP_TEXT: ["\\n", "none"][stop]}))
    study.add_trial(create_trial(
        params={"model": "arith-lm", "template": 1, "stop": 1, "temperature": 1.2, "max_tokens": 16, "n": 16},
        distributions=space, state=TrialState.PRUNED,
        user_attrs={attrs.COST_PER_INSTANCE: 0.09, attrs.INFEASIBLE: "over budget: 0.09 per instance at n=16"}))
    return study


@pytest.mark.parametrize("make", [lora_study, infer_study])
def test_every_plot_renders_in_headless_chromium_without_a_javascript_error(tmp_path, make):
    study = make(f"sqlite:///{tmp_path / 'studies.db'}")
    page, figures = build_page(study)
    assert figures == 4  # history, curves or front, importances, parallel coordinates
    path = write_report(study, tmp_path / "report.html")
    checked = render(path)
    assert checked["errors"] == []
    assert checked["figures"] == figures and checked["drawn"] == figures


def test_the_page_is_self_contained_and_says_what_a_person_needs(tmp_path):
    page, _ = build_page(lora_study(f"sqlite:///{tmp_path / 'a.db'}"))
    assert "<script src=" not in page  # plotly.js is inline: the page opens offline
    assert "learned nothing" in page and "majority-class rate" in page  # trial 0 sits at the constant score
    assert "diverged: loss 9.1" in page  # the failure and its reason
    assert "Learning curves" in page and "best: trial 2" in page
    page, _ = build_page(infer_study(f"sqlite:///{tmp_path / 'b.db'}"))
    assert "Q: {question}\nA:" in page  # template as text, not index 1
    assert "quality front" in page and "inference budget 0.02" in page  # ("/" is escaped in the JSON)
    assert "solved nothing" in page  # the config at 0 success
    assert "over budget: 0.09 per instance" in page


def test_lmtune_report_writes_one_page_per_study_and_refuses_an_unknown_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    lora_study(storage)
    infer_study(storage)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "lmtune.cli", "report", "--storage", storage, "--output-dir", "out"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["infer-demo.html", "lora-accuracy.html"]
    bad = subprocess.run([sys.executable, "-m", "lmtune.cli", "report", "--storage", storage, "--study", "nope",
                          "--output-dir", "bad"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: study: no study 'nope'"), bad.stderr
    assert not (tmp_path / "bad").exists()


def test_a_page_that_cannot_be_made_after_a_run_is_a_warning_not_a_lost_run(tmp_path, caplog):
    """``lmtune lora``/``infer`` write the page after results.json: if it fails, they warn and still exit 0."""
    from lmtune.report.reports import report_study

    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    lora_study(storage)
    assert report_study(storage, "lora-accuracy", tmp_path / "ok.html") == tmp_path / "ok.html"
    with caplog.at_level("WARNING", logger="lmtune.report.reports"):
        assert report_study(storage, "gone", tmp_path / "gone.html") is None
    assert "no report written" in caplog.text and "lmtune report" in caplog.text
    assert not (tmp_path / "gone.html").exists()


def test_the_page_lists_what_the_trajectory_summarizer_learned(tmp_path):
    """The page's "What the study learned" lists the TCS's sentences about this study, as summary.md does."""
    from lmtune.report.page import trajectory_sentences

    study = lora_study(f"sqlite:///{tmp_path / 'd.db'}")
    sentences = trajectory_sentences(study)
    assert sentences, "the TCS found nothing to say about a 7-trial study"
    page, _ = build_page(study)
    assert "What the study learned" in page
    assert all(escape(s) in page for s in sentences)  # as the page's template escapes text


def figure_of(study: optuna.Study, builder: str):
    from lmtune.finetune.scores import constant_of
    from lmtune.report import figures

    constant, maximize = constant_of(study)
    metric = study.metric_names[0]
    if builder == "history":
        return figures.history(study, metric, constant)[0]
    if builder == "curves":
        return figures.learning_curves(study, metric, constant, maximize)[0]
    return figures.parallel_coordinates(study, metric)[0]


@pytest.mark.parametrize("metric", ["accuracy", "eval_loss"])
def test_reference_lines_sit_on_the_axis_of_their_own_quantity(tmp_path, metric):
    """The majority-class rate is an accuracy: on the accuracy panel, never on a loss axis; one panel per quantity."""
    study = lora_study(f"sqlite:///{tmp_path / 'a.db'}", metric)
    history = figure_of(study, "history")
    assert [s.y0 for s in history.layout.shapes] == ([0.25] if metric == "accuracy" else [])
    curves = figure_of(study, "curves")
    titles = [a.text for a in curves.layout.annotations if a.text.startswith(("loss", "validation"))]
    assert titles == ["loss: training (line, every step), validation (dots)", "validation accuracy"]
    (line,) = curves.layout.shapes
    assert (line.y0, line.yref) == (0.25, "y2")  # the accuracy panel, whatever the trials are ranked by
    panels = {trace.yaxis for trace in curves.data}
    assert panels == {"y", "y2"}
    dense = [t for t in curves.data if t.yaxis == "y" and t.mode == "lines"]
    assert dense and all(len(t.x) == 20 for t in dense)  # every step's training loss, not two points
    dots = [t for t in curves.data if t.yaxis == "y" and t.mode == "lines+markers"]
    assert all(list(t.x) == [10, 20] for t in dots)  # the two evaluations, as markers


@pytest.mark.parametrize("metric", ["accuracy", "eval_loss"])
def test_the_best_trial_is_darkest_and_captions_follow_the_direction(tmp_path, metric):
    from plotly.colors import unlabel_rgb

    study = lora_study(f"sqlite:///{tmp_path / 'b.db'}", metric)
    fig = figure_of(study, "parallel")
    lines = [t for t in fig.data if t.mode == "lines"]
    darkness = {float(t.customdata[0][1]): -sum(unlabel_rgb(t.line.color)) for t in lines}
    best = max(darkness) if metric == "accuracy" else min(darkness)
    assert darkness[best] == max(darkness.values())
    page, _ = build_page(study)
    better = "higher" if metric == "accuracy" else "lower"
    assert f"darker is better ({better} {metric})" in page
    assert f"({better} is better)" in page and "darker is higher" not in page


def test_the_effects_and_the_sentences_are_one_measure(tmp_path):
    """The bars draw the same Spearman rho the sentences state: the page cannot say two things about one parameter."""
    from lmtune.report.page import trajectory_sentences

    study = lora_study(f"sqlite:///{tmp_path / 'c.db'}", "eval_loss")
    page, _ = build_page(study)
    assert "Parameter importances" not in page and "Parameter effects" in page
    from lmtune.report.figures import parameter_effects
    from lmtune.trajectory import summarize_study

    fig, _ = parameter_effects(summarize_study(study, metric="eval_loss"), "eval_loss")
    sentences = " ".join(trajectory_sentences(study))
    for name, rho in zip(fig.data[0].y, fig.data[0].x, strict=True):
        assert f"{name} " in sentences and f"Spearman rho {rho:+.2f}" in sentences


def test_the_final_run_and_its_test_score_are_on_the_page(tmp_path):
    study = lora_study(f"sqlite:///{tmp_path / 'd.db'}", "eval_loss")
    page, _ = build_page(study)
    assert "no final run recorded" in page
    study.set_user_attr(attrs.FINAL_RUN, {"metric": "accuracy", "score": 0.9412, "split": "test",
                                          "what": "trial 2's config retrained on the full training split",
                                          "also": {"test loss": "0.2100"}})
    page, _ = build_page(study)
    assert "test accuracy<b>0.9412</b>final run" in page
    assert "trial 2&#39;s config retrained on the full training split: test accuracy <b>0.9412</b>, test loss 0.2100" \
        in page


@pytest.mark.parametrize("metric", ["accuracy", "eval_loss"])
def test_in_chromium_the_constant_answer_is_drawn_on_the_accuracy_panel(tmp_path, metric):
    """Laid out by a real browser: the learning curves have a loss panel and an accuracy panel, and the constant
    answer's label lies over the accuracy panel (the right one), ranked by accuracy or by loss."""
    study = lora_study(f"sqlite:///{tmp_path / 'e.db'}", metric)
    checked = render(write_report(study, tmp_path / "report.html"))
    assert checked["errors"] == [] and checked["drawn"] == checked["figures"] == 4
    curves = checked["layout"][1]
    loss_panel, accuracy_panel = sorted(curves["panels"])
    assert curves["titles"] == ["loss", "accuracy"]
    (note,) = [n for n in curves["notes"] if n["text"].startswith("constant answer")]
    middle = (note["box"][0] + note["box"][1]) / 2
    assert accuracy_panel[0] <= middle <= accuracy_panel[1] and not loss_panel[0] <= middle <= loss_panel[1]
    history = checked["layout"][0]
    assert any(n["text"].startswith("constant answer") for n in history["notes"]) == (metric == "accuracy")
