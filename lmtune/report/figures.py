"""The plotly figures of a study report: what a person looks at first when a study is done.

Optuna's own plots where they say it right (best-so-far history, parallel coordinates), lmtune's where Optuna has
none: learning curves from the trials' ``trajectory`` and ``step_losses`` attributes, the parameters' effects as the
Trajectory Context Summarizer measures them (the page's sentences say the same) and the cost/quality front of an
inference study. Each builder returns ``(figure, None)`` or ``(None, why there is no figure)``.
"""

from __future__ import annotations

import html
import math
import warnings
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots

from lmtune import attrs
from lmtune.finetune.scores import learned_nothing
from lmtune.pareto import pareto_front
from lmtune.trajectory.report import MIN_EFFECT_TRIALS

#: At most this many learning curves are drawn (the best ones); a 1,200-row benchmark table would be a blur.
MAX_CURVES = 60
HEIGHT = 420
BEST, OTHER, NOTHING, FRONT = "#d62728", "rgba(31,119,180,0.45)", "rgba(127,127,127,0.7)", "#2ca02c"

Built = tuple[go.Figure | None, str | None]


def _quiet(function, *args, **kwargs):
    """Optuna's plots are experimental in places; their warnings are not the reader's concern."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def _layout(fig: go.Figure, **kwargs: Any) -> go.Figure:
    """lmtune's look; the page's headings and captions say what a figure shows, so figures carry no title."""
    fig.update_layout(**{"title": None, "template": "plotly_white", "height": HEIGHT,
                         "margin": {"l": 60, "r": 30, "t": 30, "b": 50}, **kwargs})
    return fig


def complete(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def history(study: optuna.Study, metric: str, constant: dict | None) -> Built:
    """Every trial's score and the best so far; the score of a constant answer as a floor only when it is a score
    of this metric (a majority-class rate belongs on an accuracy axis, never on a loss axis)."""
    if not complete(study):
        return None, "no trial completed yet"
    fig = _quiet(optuna.visualization.plot_optimization_history, study, target_name=metric)
    fig.update_traces(selector={"name": "Best Value"}, name=f"best {metric} so far")
    fig.update_traces(selector={"name": metric}, name=f"{metric} of a trial")
    if constant and constant.get("metric", metric) == metric:
        fig.add_hline(y=constant["value"], line_dash="dot", line_color=NOTHING,
                      annotation_text=f"constant answer: {constant['value']:.4f}", annotation_position="top right")
    numbers = [t.number for t in study.get_trials(deepcopy=False)]
    if numbers and max(numbers) <= 20:  # whole trial numbers, not 0.2, 0.4, ...
        fig.update_xaxes(tick0=0, dtick=1)
    return _layout(fig, xaxis_title="trial", yaxis_title=metric,
                   legend={"orientation": "h", "y": -0.2}), None


def task_metric_of(trials: list[FrozenTrial], constant: dict | None) -> str | None:
    """The task's metric the trials recorded beside their losses (accuracy, exact_match), or None."""
    if constant and constant.get("metric"):
        return constant["metric"]
    keys = {k for t in trials for r in t.user_attrs.get(attrs.TRAJECTORY) or () for k in r}
    return next((k for k in ("accuracy", "exact_match") if k in keys), None)


def learning_curves(study: optuna.Study, metric: str, constant: dict | None, maximize: bool) -> Built:
    """One panel per quantity: the loss (training loss at every optimizer step as a thin line, the validation loss
    at each evaluation as dots) and the task's metric at each evaluation, with the score of a constant answer on
    that metric's panel only. A trial evaluates twice without a pruner (``PLAIN_EVALS``), so its training loss is
    the dense curve and the evaluations are markers on it."""
    trials = [t for t in complete(study) if t.user_attrs.get(attrs.TRAJECTORY)]
    if not trials:
        return None, "no trial recorded a learning curve (trajectory attribute)"
    trials.sort(key=lambda t: t.value, reverse=maximize)
    best, shown = trials[0], trials[:MAX_CURVES]
    task = task_metric_of(trials, constant)
    panels = ["loss"] + ([task] if task else [])
    fig = make_subplots(rows=1, cols=len(panels), horizontal_spacing=0.1, subplot_titles=(
        "loss: training (line, every step), validation (dots)", *([f"validation {task}"] if task else [])))
    seen: set[str] = set()
    for trial in reversed(shown):  # the best is drawn last, on top
        if trial is best:
            style = (f"best: trial {trial.number}", BEST, 2.5)
        elif learned_nothing(constant, trial, maximize):
            style = ("learned nothing", NOTHING, 1)
        else:
            style = ("other trials", OTHER, 1)
        for trace, col in _curve_traces(trial, panels, style, first=style[0] not in seen):
            fig.add_trace(trace, row=1, col=col)
        seen.add(style[0])
    if task and constant and constant.get("metric", task) == task:
        fig.add_hline(y=constant["value"], line_dash="dot", line_color=NOTHING, row=1, col=2,
                      annotation_text=f"constant answer: {constant['value']:.4f}",
                      annotation_position="bottom right")
    fig.update_xaxes(title_text="optimizer step")
    for col, name in enumerate(panels, start=1):
        fig.update_yaxes(title_text=name, row=1, col=col)
    _layout(fig, legend={"orientation": "h", "y": -0.2})
    fig.update_layout(margin={"t": 60})  # room for the panel titles below the plot's tool bar
    return fig, None


def _curve_traces(trial: FrozenTrial, panels: list[str], style: tuple[str, str, float], first: bool):
    """A trial's traces: its training loss per step and validation loss per evaluation on the loss panel, its task
    metric per evaluation on the next; ``first`` puts its group in the legend once."""
    group, color, width = style
    records = trial.user_attrs[attrs.TRAJECTORY]
    steps = [r.get("step") for r in records]
    losses = trial.user_attrs.get(attrs.STEP_LOSSES) or []
    hover = "trial " + str(trial.number) + "<br>step %{x}<br>{name} %{y:.4f}<extra></extra>"
    common = {"legendgroup": group, "name": group}
    if losses:
        yield go.Scatter(x=list(range(1, len(losses) + 1)), y=losses, mode="lines", showlegend=first,
                         line={"color": color, "width": width * 0.6}, opacity=0.6,
                         hovertemplate=hover.replace("{name}", "training loss"), **common), 1
    yield go.Scatter(x=steps, y=[r.get("eval_loss") for r in records], mode="lines+markers",
                     showlegend=first and not losses, line={"color": color, "width": width, "dash": "dot"},
                     marker={"size": 7, "color": color, "line": {"color": "white", "width": 1}},
                     hovertemplate=hover.replace("{name}", "validation loss"), **common), 1
    if len(panels) > 1:
        yield go.Scatter(x=steps, y=[r.get(panels[1]) for r in records], mode="lines+markers", showlegend=False,
                         line={"color": color, "width": width}, marker={"size": 7, "color": color},
                         hovertemplate=hover.replace("{name}", panels[1]), **common), 2


def parameter_effects(report: dict[str, Any], metric: str) -> Built:
    """Each numeric parameter's effect on the score as the Trajectory Context Summarizer measures it (Spearman's rank
    correlation over the completed trials, signed so that positive means higher values scored better): the same
    numbers the page's sentences give, so the bars and the words cannot disagree."""
    effects = [(name, h["effect"]) for name, h in report["params"].items() if "rho" in h.get("effect", {})]
    if not effects:
        return None, (f"needs at least {MIN_EFFECT_TRIALS} completed trials with different values of a numeric "
                      "parameter")
    effects.sort(key=lambda ne: abs(ne[1]["rho"]))  # plotly draws the first bar at the bottom
    colors = {"strong": BEST, "moderate": "#ff7f0e", "weak": OTHER, "none": NOTHING}
    fig = go.Figure(go.Bar(
        x=[e["rho"] for _, e in effects], y=[name for name, _ in effects], orientation="h",
        marker={"color": [colors.get(e["strength"], NOTHING) for _, e in effects]},
        text=[f"{e['rho']:+.2f} {e['strength']}" for _, e in effects], textposition="auto",
        hovertemplate="%{y}: Spearman rho %{x:+.2f}<extra></extra>"))
    fig.add_vline(x=0, line_color="#444", line_width=1)
    return _layout(fig, height=max(220, 60 + 48 * len(effects)), showlegend=False,
                   xaxis={"range": [-1.05, 1.05], "zeroline": False,
                          "title": f"Spearman rho with {metric}: left, lower values scored better; right, higher"},
                   yaxis_title=None), None


def parallel_coordinates(study: optuna.Study, metric: str, labels: dict[str, list[str]] | None = None) -> Built:
    """Every completed trial as a line through its parameters to its score. ``labels`` names the values of
    index parameters (an inference study's templates and stops) so the axes show text, not 0 and 1."""
    trials = complete(study)
    if len(trials) < 2:
        return None, "needs at least two completed trials"
    fig = _quiet(optuna.visualization.plot_parallel_coordinate, study, target_name=metric)
    axes = list(fig.layout.xaxis.ticktext or ())  # Optuna draws each axis at x = its position, ticks as annotations
    for name, texts in (labels or {}).items():
        if name not in axes:
            continue

        def text_of(value, texts=texts):
            index = str(value)
            return html.escape(_short(texts[int(index)])) if index.isdigit() and int(index) < len(texts) else value

        for note in fig.layout.annotations or ():
            if note.x == axes.index(name):
                note.text = text_of(note.text)
        for trace in fig.data:
            if trace.customdata is not None:
                trace.customdata = [[key, text_of(value) if key == name else value] for key, value in trace.customdata]
    _darken(fig, study.direction == optuna.study.StudyDirection.MAXIMIZE)
    return _layout(fig), None


def _darken(fig: go.Figure, maximize: bool, floor: float = 0.3) -> None:
    """Optuna colours each trial's line on a Blues scale that starts at white, so the worst trials vanish on a
    white page; start the scale at ``floor`` instead (lines and colour bar alike), the best trial darkest whether
    the metric is maximized or minimized (Optuna reverses its colour bar for a minimized one). Line traces carry
    their score as ``customdata[0][1]``."""
    from plotly.colors import sample_colorscale

    lines = [t for t in fig.data if t.mode == "lines" and t.customdata is not None and len(t.customdata)]
    try:
        values = [float(t.customdata[0][1]) for t in lines]
    except (TypeError, ValueError):
        return
    if not values:
        return
    low, span = min(values), (max(values) - min(values)) or 1.0
    for trace, value in zip(lines, values, strict=True):
        goodness = (value - low) / span if maximize else (low + span - value) / span
        trace.line.color = sample_colorscale("Blues", [floor + (1 - floor) * goodness])[0]
        trace.opacity = 0.85
    stops = [i / 8 for i in range(9)]
    scale = [[s, c] for s, c in zip(stops, sample_colorscale("Blues", [floor + (1 - floor) * s for s in stops]),
                                    strict=True)]
    for trace in fig.data:
        if trace.mode == "markers" and trace.marker.colorscale is not None:
            trace.marker.colorscale = scale


def cost_quality(study: optuna.Study, metric: str, inference_budget: float | None) -> Built:
    """An inference study's scored configs by cost per instance and quality; the front no config beats on both;
    the per-instance budget as a line. Configs found over budget have no quality and are marked on the axis."""
    points = [(t.user_attrs[attrs.COST_PER_INSTANCE], t.value, t) for t in complete(study)
              if attrs.COST_PER_INSTANCE in t.user_attrs]
    if not points:
        return None, "no config was scored"
    front = pareto_front(points)
    within = [p for p in points if inference_budget is None or p[0] <= inference_budget]
    best = max(within, key=lambda p: (p[1], -p[0]), default=None)
    fig = go.Figure()
    hover = "%{text}<br>cost %{x:.3g}/instance<br>" + metric + " %{y:.4f}<extra></extra>"
    fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="markers", name="scored config",
                             marker={"color": OTHER, "size": 9}, text=[_describe(p[2]) for p in points],
                             hovertemplate=hover))
    fig.add_trace(go.Scatter(x=[p[0] for p in front], y=[p[1] for p in front], mode="lines+markers",
                             name="cost/quality front", line={"color": FRONT, "shape": "hv", "width": 2},
                             marker={"color": FRONT, "size": 10}, text=[_describe(p[2]) for p in front],
                             hovertemplate=hover))
    over = [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
            if isinstance(t.user_attrs.get(attrs.COST_PER_INSTANCE), int | float)]
    if over:
        fig.add_trace(go.Scatter(x=[t.user_attrs[attrs.COST_PER_INSTANCE] for t in over], y=[0] * len(over),
                                 mode="markers", name="over budget (not scored)", text=[_describe(t) for t in over],
                                 marker={"symbol": "x", "color": NOTHING, "size": 8},
                                 hovertemplate="%{text}<br>estimated cost %{x:.3g}/instance<extra></extra>"))
    if best is not None:
        fig.add_trace(go.Scatter(x=[best[0]], y=[best[1]], mode="markers", name=f"chosen: trial {best[2].number}",
                                 marker={"symbol": "star", "color": BEST, "size": 18}))
    if inference_budget is not None:
        fig.add_vline(x=inference_budget, line_dash="dash", line_color=BEST, annotation_position="top right",
                      annotation_text=f"inference budget {inference_budget:g}/instance")
    positive = [p[0] for p in points if p[0] > 0]
    log_x = len(positive) == len(points) and max(positive) / min(positive) > 20
    return _layout(fig, xaxis_title="cost per instance ($)",
                   yaxis_title=metric, xaxis_type="log" if log_x else "linear",
                   legend={"orientation": "h", "y": -0.2}), None


def _describe(trial: FrozenTrial) -> str:
    shown = {k: v for k, v in trial.params.items() if k not in ("template", "stop")}
    return f"trial {trial.number}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items())


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) and math.isfinite(value) else str(value)


def _short(text: str, width: int = 24) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"
