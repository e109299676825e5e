"""The plotly figures of a study report: what a person looks at first when a study is done.

Optuna's own plots where they say it right (best-so-far history, parameter importances, parallel coordinates),
lmtune's where Optuna has none: learning curves from the trials' ``trajectory`` attributes and the cost/quality
front of an inference study. Each builder returns ``(figure, None)`` or ``(None, why there is no figure)``.
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
    fig.update_layout(title=None, template="plotly_white", height=HEIGHT, margin={"l": 60, "r": 30, "t": 30, "b": 50},
                      **kwargs)
    return fig


def complete(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def history(study: optuna.Study, metric: str, constant: dict | None) -> Built:
    """Every trial's score and the best so far, with the score of a constant answer as a floor."""
    if not complete(study):
        return None, "no trial completed yet"
    fig = _quiet(optuna.visualization.plot_optimization_history, study, target_name=metric)
    fig.update_traces(selector={"name": "Best Value"}, name=f"best {metric} so far")
    fig.update_traces(selector={"name": metric}, name=f"{metric} of a trial")
    if constant:
        fig.add_hline(y=constant["value"], line_dash="dot", line_color=NOTHING,
                      annotation_text=f"constant answer: {constant['value']:.4f}", annotation_position="top right")
    numbers = [t.number for t in study.get_trials(deepcopy=False)]
    if numbers and max(numbers) <= 20:  # whole trial numbers, not 0.2, 0.4, ...
        fig.update_xaxes(tick0=0, dtick=1)
    return _layout(fig, xaxis_title="trial", yaxis_title=metric,
                   legend={"orientation": "h", "y": -0.2}), None


def learning_curves(study: optuna.Study, metric: str, constant: dict | None, maximize: bool) -> Built:
    """The trials' trajectories: the metric and the evaluation loss at each evaluation along training."""
    trials = [t for t in complete(study) if t.user_attrs.get(attrs.TRAJECTORY)]
    if not trials:
        return None, "no trial recorded a learning curve (trajectory attribute)"
    trials.sort(key=lambda t: t.value, reverse=maximize)
    best, shown = trials[0], trials[:MAX_CURVES]
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"validation {metric}", "validation loss"),
                        horizontal_spacing=0.1)
    seen: set[str] = set()
    for trial in reversed(shown):  # the best is drawn last, on top
        records = trial.user_attrs[attrs.TRAJECTORY]
        steps = [r.get("step") for r in records]
        if trial is best:
            group, color, width, dash = f"best: trial {trial.number}", BEST, 3, "solid"
        elif learned_nothing(constant, trial, maximize):
            group, color, width, dash = "learned nothing", NOTHING, 1, "dash"
        else:
            group, color, width, dash = "other trials", OTHER, 1, "solid"
        for col, key in ((1, metric), (2, "eval_loss")):
            fig.add_trace(go.Scatter(
                x=steps, y=[r.get(key) for r in records], mode="lines+markers", name=group, legendgroup=group,
                showlegend=col == 1 and group not in seen, line={"color": color, "width": width, "dash": dash},
                marker={"size": 4},
                hovertemplate=f"trial {trial.number}<br>step %{{x}}<br>{key} %{{y:.4f}}<extra></extra>",
            ), row=1, col=col)
        seen.add(group)
    if constant:
        fig.add_hline(y=constant["value"], line_dash="dot", line_color=NOTHING, row=1, col=1,
                      annotation_text="constant answer", annotation_position="bottom right")
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(title_text=metric, row=1, col=1)
    fig.update_yaxes(title_text="loss", row=1, col=2)
    _layout(fig, legend={"orientation": "h", "y": -0.2})
    fig.update_layout(margin={"t": 60})  # room for the panel titles below the plot's tool bar
    return fig, None


def importances(study: optuna.Study, metric: str) -> Built:
    """Optuna's parameter importances (PED-ANOVA, its default: no extra dependency)."""
    trials = complete(study)
    varied = [name for name in {n for t in trials for n in t.params}
              if len({repr(t.params.get(name)) for t in trials}) > 1]
    if len(trials) < 2 or not varied:
        return None, "needs at least two completed trials with different parameters"
    if len({t.value for t in trials}) < 2:
        return None, f"every completed trial has the same {metric}, so no parameter explains anything"
    try:
        fig = _quiet(optuna.visualization.plot_param_importances, study, target_name=metric)
    except (RuntimeError, ValueError) as error:
        return None, f"Optuna could not compute importances: {error}"
    return _layout(fig, xaxis_title=f"importance for {metric} (share of its variation)", yaxis_title=None), None


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
    _darken(fig)
    return _layout(fig), None


def _darken(fig: go.Figure, floor: float = 0.3) -> None:
    """Optuna colours each trial's line on a Blues scale that starts at white, so the worst trials vanish on a
    white page; start the scale at ``floor`` instead (lines and colour bar alike). Line traces carry their score
    as ``customdata[0][1]``."""
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
        trace.line.color = sample_colorscale("Blues", [floor + (1 - floor) * (value - low) / span])[0]
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
    from lmtune.inference.tuner import pareto_front

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
