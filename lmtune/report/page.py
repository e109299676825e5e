"""One self-contained HTML page per study: plotly.js inline, every figure and table on one page, no network.

Works on any lmtune study (``lmtune lora``, ``lmtune infer``, benchmark tables) and on plain Optuna studies:
what a study is comes from the attributes lmtune stores (``lmtune.attrs``). This module gathers what the page
says; ``templates/page.html.j2`` (jinja2, every value escaped) lays it out.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import jinja2
import optuna
import plotly.io as pio
from markupsafe import Markup
from optuna.trial import FrozenTrial, TrialState

from lmtune import attrs
from lmtune.files import write_atomic
from lmtune.finetune.scores import constant_of, learned_nothing
from lmtune.llm.generation import stop_text
from lmtune.report import figures
from lmtune.runtime.status import advisor_summary
from lmtune.runtime.trials import counted_trials, describe_failure
from lmtune.trajectory import learned_sentences, summarize_study
from lmtune.version import __version__

#: The study attribute ``lmtune infer`` stores what it searched in.
INFER_ATTR = "lmtune_infer"
#: Each figure's container carries this class; a report test checks that every one rendered.
FIGURE_CLASS = "lmtune-figure"
KINDS = {"lora": "LoRA search (lmtune lora)", "infer": "decoding search under a cost budget (lmtune infer)",
         "table": "benchmark table (lmtune bench build-table)", "optuna": "Optuna study"}
#: StrictUndefined: a name the template misspells fails the page instead of printing nothing.
_TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("lmtune.report", "templates"), autoescape=True,
                                trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
_TEMPLATES.filters["fmt"] = format  # {{ value|fmt(".4f") }}: Python's format spec


def study_kind(study: optuna.Study) -> str:
    """``infer``, ``lora``, ``table`` (a benchmark build) or ``optuna`` (a study lmtune did not make)."""
    user = study.user_attrs
    if INFER_ATTR in user:
        return "infer"
    if attrs.TABLE in user:
        return "table"
    if (user.get(attrs.JOB) or {}).get("command") == "lora" or attrs.SPACE in user:
        return "lora"
    return "optuna"


def metric_of(study: optuna.Study) -> str:
    names = study.metric_names
    return names[0] if names else "objective"


def readable_params(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    """A trial's parameters as a person reads them: an inference trial's template and stop as text."""
    params = dict(trial.params)
    infer = study.user_attrs.get(INFER_ATTR) or {}
    for name, attr, options in (("template", attrs.TEMPLATE_TEXT, infer.get("templates")),
                                ("stop", attrs.STOP_TEXT, infer.get("stops"))):
        if name not in params:
            continue
        if attr in trial.user_attrs:
            params[name] = trial.user_attrs[attr]
        elif options and isinstance(params[name], int) and params[name] < len(options):
            params[name] = options[params[name]] if name == "template" else stop_text(options[params[name]])
    return params


def trajectory_sentences(study: optuna.Study) -> list[str]:
    """The Trajectory Context Summarizer's plain sentences about the study (the same ones ``summary.md`` lists)."""
    return learned_sentences(summarize_study(study, metric=metric_of(study)))


def final_run(study: optuna.Study) -> dict[str, Any] | None:
    """What the command did after the search (``attrs.FINAL_RUN``): the best config retrained and tested, or
    tested on the held-out split; None before it ran (or for a study no lmtune command finished)."""
    final = study.user_attrs.get(attrs.FINAL_RUN)
    return final if isinstance(final, dict) and final.get("score") is not None else None


def build_page(study: optuna.Study) -> tuple[str, int]:
    """The report's HTML and how many figures it holds."""
    kind, metric = study_kind(study), metric_of(study)
    constant, maximize = constant_of(study)
    counted = sorted(counted_trials(study), key=lambda t: t.number)
    best = _best(study)
    infer = study.user_attrs.get(INFER_ATTR) or {}
    learned = summarize_study(study, metric=metric)  # the sentences and the effects figure: one report
    panels = _figures(study, kind, metric, constant, maximize, infer, learned)
    failures = _failures(counted)
    page = _TEMPLATES.get_template("page.html.j2").render(
        study_name=study.study_name, kind=KINDS[kind], kind_name=kind, metric=metric, maximize=maximize,
        cards=[("trials", len(counted))] + [(name.lower(), n) for name, n in sorted(
            Counter(t.state.name for t in counted).items())],
        best=best, best_params={k: _fmt(v) for k, v in readable_params(study, best).items()} if best else {},
        best_learned_nothing=learned_nothing(constant, best, maximize) if best else None,
        lora=_lora_facts(study.user_attrs) if kind == "lora" else None, infer=infer,
        spent=sum(t.user_attrs.get(attrs.SPEND, 0.0) for t in study.get_trials(deepcopy=False)),
        optimization_budget=study.user_attrs.get(attrs.OPTIMIZATION_BUDGET), constant=constant,
        sentences=learned_sentences(learned), figures=panels, final=final_run(study), figure_class=FIGURE_CLASS,
        advisor=_advisor(counted),
        failures=failures, failure_reasons=Counter(str(r[2]).split(":")[0] for r in failures).most_common(),
        columns=["trial", "state", metric, *_param_names(counted), "seconds", "note"],
        rows=_trial_rows(study, counted, best, constant, maximize),
        plotly_js=Markup(_plotly_js()), version=__version__, plotly_version=_plotly_version())
    return page, sum(f["html"] is not None for f in panels)


def write_report(study: optuna.Study, path: str | Path) -> Path:
    """Write the study's report page to ``path`` (atomically); returns the path."""
    page, _ = build_page(study)
    return write_atomic(Path(path), page)


def _best(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE trial; for an inference study the best within its per-instance budget."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    budget = (study.user_attrs.get(INFER_ATTR) or {}).get("inference_budget")
    if budget is not None:
        trials = [t for t in trials if t.user_attrs.get(attrs.COST_PER_INSTANCE, float("inf")) <= budget]
        return max(trials, key=lambda t: (t.value, -t.user_attrs[attrs.COST_PER_INSTANCE], -t.number), default=None)
    if not trials:
        return None
    return study.best_trial


def _figures(study, kind, metric, constant, maximize, infer, learned) -> list[dict[str, Any]]:
    """Each figure's title, caption and HTML (None, with why, where the study cannot draw it). Captions say which way
    is better, since the same page serves a maximized accuracy and a minimized loss."""
    better = "higher" if maximize else "lower"
    scored = "the tuning split" if kind == "infer" else "the validation split"
    floor = (" The dotted line is what one constant answer scores." if constant and
             constant.get("metric", metric) == metric else "")
    built = [("Best so far", f"Each dot is one trial's {metric} on {scored} ({better} is better); the line is the "
              f"best so far.{floor}", figures.history(study, metric, constant))]
    if kind == "infer":
        built.append(("Cost and quality", f"Every scored config by its cost per instance and {metric}. The green "
                      "staircase is the cost/quality front: no config is both cheaper and better. The star is the "
                      "config chosen within the per-instance budget (dashed line); crosses are configs measured over "
                      "the budget, which get no score.",
                      figures.cost_quality(study, metric, infer.get("inference_budget"))))
    else:
        built.append(("Learning curves", _curves_caption(metric, maximize, constant),
                      figures.learning_curves(study, metric, constant, maximize)))
    labels = {"template": [str(x) for x in infer.get("templates") or []],
              "stop": [stop_text(x) for x in infer.get("stops") or []]}
    built += [("Parameter effects", "Spearman's rank correlation of each numeric parameter with "
               f"{metric} over the completed trials, signed so that a bar to the right means higher values scored "
               "better: the numbers behind the sentences of \"What the study learned\". It measures a monotone "
               "trend, one parameter at a time (a learning rate best in the middle shows as weak); with few trials a "
               "hint, not a finding.", figures.parameter_effects(learned, metric)),
              ("Parallel coordinates", f"Each completed trial is a line through its parameter values to its {metric}; "
               f"darker is better ({better} {metric}).",
               figures.parallel_coordinates(study, metric, labels if infer else None))]
    return [{"title": title, "caption": caption, "why": why,
             "html": None if fig is None else Markup(pio.to_html(
                 fig, full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True}))}
            for title, caption, (fig, why) in built]


def _curves_caption(metric: str, maximize: bool, constant: dict | None) -> str:
    task = (constant or {}).get("metric")
    ranked = f"Trials are ranked by validation {metric} ({'higher' if maximize else 'lower'} is better)"
    panels = (f"left, the loss: each trial's training loss at every optimizer step (thin line) and its validation "
              f"loss at each evaluation (dots); right, its validation {task} at each evaluation"
              + (", with the dotted score of one constant answer" if constant and task else "")) if task else (
              "the loss: each trial's training loss at every optimizer step (thin line) and its validation loss at "
              "each evaluation (dots)")
    return (f"{ranked}; {panels}. At most the {figures.MAX_CURVES} best trials: the best in red, trials that learned "
            "nothing grey.")


def _lora_facts(user: dict[str, Any]) -> dict[str, Any]:
    return {"model": user.get("model"), "data": user.get("dataset"), "proxy": _proxy_words(user),
            "seed": user.get("seed")}


def _failures(counted: list[FrozenTrial]) -> list[tuple[int, str, Any]]:
    """(number, state, reason) of every FAIL and PRUNED trial."""
    rows = []
    for t in counted:
        if t.state == TrialState.FAIL:
            rows.append((t.number, "FAIL", describe_failure(t)))
        elif t.state == TrialState.PRUNED:
            rows.append((t.number, "PRUNED", _pruned_reason(t)))
    return rows


def _pruned_reason(trial: FrozenTrial) -> Any:
    return trial.user_attrs.get(attrs.INFEASIBLE) or trial.user_attrs.get(attrs.FAIL_REASON) or "pruned"


def _param_names(counted: list[FrozenTrial]) -> list[str]:
    return list(dict.fromkeys(n for t in counted for n in t.params))


def _advisor(counted: list[FrozenTrial]) -> dict[str, Any] | None:
    """The agent in centaur mode: how often the model replaced the classical sampler's proposal, and each time with
    what and why (None without an advising agent)."""
    advisor = advisor_summary(counted)
    if advisor is None:
        return None
    return {**advisor, "rows": [(o["number"], _fmt(o["proposal"]), _fmt(o["config"]), o["reason"])
                                for o in advisor["overridden"]]}


def _trial_rows(study, counted, best, constant, maximize) -> list[dict[str, Any]]:
    """Each trial's cells (number, state, value, parameters, seconds), its note and whether it is flagged."""
    names = _param_names(counted)
    rows = []
    for t in counted:
        params = readable_params(study, t)
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and \
            t.datetime_start else None
        nothing = learned_nothing(constant, t, maximize)
        note = nothing or (describe_failure(t) if t.state == TrialState.FAIL else "")
        if t.state == TrialState.PRUNED:
            note = _pruned_reason(t)
        cost = t.user_attrs.get(attrs.COST_PER_INSTANCE)
        if isinstance(cost, int | float):
            note = f"{cost:.3g}/instance" + (f"; {note}" if note else "")
        value = f"{t.value:.4f}" if t.state == TrialState.COMPLETE else ""
        rows.append({"cells": [str(t.number), t.state.name, value, *(_fmt(params.get(n, "")) for n in names),
                               "" if seconds is None else f"{seconds:.1f}"],
                     "note": note or "", "best": best is not None and t.number == best.number, "flag": bool(nothing)})
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().replace("</script>", "<\\/script>")


def _plotly_version() -> str:
    import plotly

    return plotly.__version__


def _proxy_words(user: dict) -> str:
    """The study's proxy in words (older studies stored only its data fraction)."""
    proxy = user.get("proxy") or {}
    if proxy.get("steps"):
        return f"{proxy['steps']} steps per trial"
    if proxy.get("share"):
        return f"{proxy['share']:.0%} of each config's full run"
    return f"{user.get('proxy_fraction')} of the training split"
