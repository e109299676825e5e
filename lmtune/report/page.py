"""One self-contained HTML page per study: plotly.js inline, every figure and table on one page, no network.

Works on any lmtune study (``lmtune lora``, ``lmtune infer``, benchmark tables) and on plain Optuna studies:
what a study is comes from the attributes lmtune stores (``lmtune.attrs``).
"""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import plotly.io as pio
from optuna.trial import FrozenTrial, TrialState

from lmtune import attrs
from lmtune.files import write_atomic
from lmtune.inference.config import stop_text
from lmtune.report import figures
from lmtune.runtime.status import advisor_summary
from lmtune.runtime.trials import constant_of, counted_trials, describe_failure, learned_nothing
from lmtune.trajectory import learned_sentences, summarize_study
from lmtune.version import __version__

#: The study attribute ``lmtune infer`` stores what it searched in.
INFER_ATTR = "lmtune_infer"
#: Each figure's container carries this class; a report test checks that every one rendered.
FIGURE_CLASS = "lmtune-figure"
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1180px;padding:16px 24px;
color:#222;background:#fff}
h1{font-size:1.6em;margin-bottom:0.2em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
.sub{color:#555;margin-top:0}.caption{color:#444;margin:0.3em 0}.flag{color:#b35900;font-weight:600}
.none{color:#777;font-style:italic}
table{border-collapse:collapse;font-size:0.88em;margin:0.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}tr.best td{background:#fff3e0}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px}
.card b{display:block;font-size:1.3em}code{background:#f4f4f4;padding:0 3px}
"""


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


def build_page(study: optuna.Study) -> tuple[str, int]:
    """The report's HTML and how many figures it holds."""
    kind, metric = study_kind(study), metric_of(study)
    constant, maximize = constant_of(study)
    counted = sorted(counted_trials(study), key=lambda t: t.number)
    best = _best(study)
    infer = study.user_attrs.get(INFER_ATTR) or {}
    parts = [_header(study, kind, metric, counted, best, constant, maximize)]
    sentences = trajectory_sentences(study)
    if sentences:
        parts.append("<h2>What the study learned</h2><ul>" + "".join(f"<li>{_e(s)}</li>" for s in sentences)
                     + "</ul>")
    scored = "the tuning split" if kind == "infer" else "the validation split"
    floor = " The dotted line is what one constant answer scores." if constant else ""
    built = [("Best so far", f"Each dot is one trial's {metric} on {scored}; the line is the best so far.{floor}",
              figures.history(study, metric, constant))]
    if kind == "infer":
        built.append(("Cost and quality", f"Every scored config by its cost per instance and {metric}. The green "
                      "staircase is the cost/quality front: no config is both cheaper and better. The star is the "
                      "config chosen within the per-instance budget (dashed line); crosses are configs measured over "
                      "the budget, which get no score.",
                      figures.cost_quality(study, metric, infer.get("inference_budget"))))
    else:
        built.append(("Learning curves", f"Validation {metric} and loss at each evaluation along training, one line "
                      f"per trial (at most the {figures.MAX_CURVES} best): the best trial in red, trials that learned "
                      "nothing dashed grey.", figures.learning_curves(study, metric, constant, maximize)))
    labels = {"template": [str(x) for x in infer.get("templates") or []],
              "stop": [stop_text(x) for x in infer.get("stops") or []]}
    built += [("Parameter importances", f"How much of the variation of {metric} each parameter explains (Optuna's "
               "PED-ANOVA over the completed trials); with few trials a hint, not a finding.",
               figures.importances(study, metric)),
              ("Parallel coordinates", f"Each completed trial is a line through its parameter values to its {metric} "
               "(darker is higher).", figures.parallel_coordinates(study, metric, labels if infer else None))]
    count = 0
    for title, caption, (fig, why) in built:
        parts.append(f"<h2>{_e(title)}</h2>")
        if fig is None:
            parts.append(f'<p class="none">No figure: {_e(why)}.</p>')
            continue
        parts.append(f"<p class='caption'>{_e(caption)}</p>")
        count += 1
        div = pio.to_html(fig, full_html=False, include_plotlyjs=False,
                          config={"displaylogo": False, "responsive": True})
        parts.append(f'<div class="{FIGURE_CLASS}">{div}</div>')
    parts.append(_failures(study, counted))
    parts.append(_advisor(counted))
    parts.append(_trials_table(study, counted, best, metric, constant, maximize))
    title = f"lmtune report: {study.study_name}"
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{STYLE}</style><script>{_plotly_js()}</script></head><body>" + "\n".join(parts)
            + f"<p class='sub'>Written by lmtune {__version__} with plotly {_plotly_version()}.</p></body></html>\n")
    return page, count


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


def _header(study, kind, metric, counted, best, constant, maximize) -> str:
    kinds = {"lora": "LoRA search (lmtune lora)", "infer": "decoding search under a cost budget (lmtune infer)",
             "table": "benchmark table (lmtune bench build-table)", "optuna": "Optuna study"}
    states = Counter(t.state.name for t in counted)
    direction = "higher is better" if maximize else "lower is better"
    cards = [("trials", len(counted))] + [(name.lower(), n) for name, n in sorted(states.items())]
    out = [f"<h1>{_e(study.study_name)}</h1>",
           f"<p class='sub'>{_e(kinds[kind])}; metric <b>{_e(metric)}</b> ({direction})</p>",
           "<div class='cards'>" + "".join(f"<div class='card'>{_e(k)}<b>{v}</b></div>" for k, v in cards)]
    if best is not None:
        out.append(f"<div class='card'>best {_e(metric)}<b>{best.value:.4f}</b>trial {best.number}</div>")
    out.append("</div>")
    infer = study.user_attrs.get(INFER_ATTR) or {}
    facts = []
    if kind == "lora":
        data = study.user_attrs.get("dataset")
        user = study.user_attrs
        facts.append(f"model <code>{_e(user.get('model'))}</code>" + (f", data <code>{_e(data)}</code>" if data else "")
                     + f", proxy {_e(_proxy_words(user))}, seed {user.get('seed')}")
    if infer:
        spent = sum(t.user_attrs.get(attrs.SPEND, 0.0) for t in study.get_trials(deepcopy=False))
        facts.append(f"task <code>{_e(infer.get('task'))}</code>, models {_e(', '.join(infer.get('models', [])))}, "
                     f"per-instance budget {infer.get('inference_budget')}, spent {spent:.4g} of "
                     f"{study.user_attrs.get(attrs.OPTIMIZATION_BUDGET)}")
    if constant:
        facts.append(f"trials at or below {constant['value']:.4f} are flagged "
                     f"<span class='flag'>{_e(constant.get('label', 'learned nothing'))}</span>"
                     + (f": {_e(constant['what'])}" if constant.get("what") else ""))
    if best is not None:
        nothing = learned_nothing(constant, best, maximize)
        if nothing:
            facts.append(f"<span class='flag'>the best trial {_e(nothing)}</span>")
        facts.append("best config: " + ", ".join(f"<code>{_e(k)}={_e(_fmt(v))}</code>"
                                                 for k, v in readable_params(study, best).items()))
    else:
        facts.append("<span class='flag'>no trial completed" + (" within the per-instance budget" if infer else "")
                     + "</span>")
    return "\n".join(out) + "<ul>" + "".join(f"<li>{f}</li>" for f in facts) + "</ul>"


def _failures(study, counted) -> str:
    rows = []
    for t in counted:
        if t.state == TrialState.FAIL:
            rows.append((t.number, "FAIL", describe_failure(t)))
        elif t.state == TrialState.PRUNED:
            reason = t.user_attrs.get(attrs.INFEASIBLE) or t.user_attrs.get(attrs.FAIL_REASON) or "pruned"
            rows.append((t.number, "PRUNED", reason))
    if not rows:
        return "<h2>Failures</h2><p class='none'>No trial failed or was pruned.</p>"
    reasons = Counter(str(r[2]).split(":")[0] for r in rows)
    summary = ", ".join(f"{n} x {_e(reason)}" for reason, n in reasons.most_common())
    body = "".join(f"<tr><td>{n}</td><td>{s}</td><td>{_e(str(r))}</td></tr>" for n, s, r in rows)
    return (f"<h2>Failures</h2><p>{len(rows)} trial(s) without a score: {summary}.</p>"
            f"<table><tr><th>trial</th><th>state</th><th>reason</th></tr>{body}</table>")


def _advisor(counted) -> str:
    """The agent in centaur mode: the trials whose proposal the model replaced, with its reason (nothing otherwise)."""
    advisor = advisor_summary(counted)
    if advisor is None:
        return ""
    text = (f"The language model replaced the classical sampler's proposal on {advisor['overrides']} of "
            f"{advisor['trials']} trials ({advisor['override_share']:.0%}); it was asked on {advisor['asked']}.")
    if not advisor["overridden"]:
        return f"<h2>Agent overrides</h2><p>{_e(text)}</p>"
    body = "".join(f"<tr><td>{o['number']}</td><td>{_e(_fmt(o['proposal']))}</td><td>{_e(_fmt(o['config']))}</td>"
                   f"<td>{_e(o['reason'])}</td></tr>" for o in advisor["overridden"])
    return (f"<h2>Agent overrides</h2><p>{_e(text)}</p><table><tr><th>trial</th><th>proposal</th>"
            f"<th>replaced by</th><th>reason</th></tr>{body}</table>")


def _trials_table(study, counted, best, metric, constant, maximize) -> str:
    names = list(dict.fromkeys(n for t in counted for n in t.params))
    head = "".join(f"<th>{_e(n)}</th>" for n in ["trial", "state", metric, *names, "seconds", "note"])
    rows = []
    for t in counted:
        params = readable_params(study, t)
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and \
            t.datetime_start else None
        note = learned_nothing(constant, t, maximize) or (describe_failure(t) if t.state == TrialState.FAIL else "")
        if t.state == TrialState.PRUNED:
            note = t.user_attrs.get(attrs.INFEASIBLE) or t.user_attrs.get(attrs.FAIL_REASON) or "pruned"
        cost = t.user_attrs.get(attrs.COST_PER_INSTANCE)
        if isinstance(cost, int | float):
            note = f"{cost:.3g}/instance" + (f"; {note}" if note else "")
        value = f"{t.value:.4f}" if t.state == TrialState.COMPLETE else ""
        cells = [str(t.number), t.state.name, value, *(_fmt(params.get(n, "")) for n in names),
                 "" if seconds is None else f"{seconds:.1f}", note or ""]
        css = " class='best'" if best is not None and t.number == best.number else ""
        flag = " class='flag'" if learned_nothing(constant, t, maximize) else ""
        rows.append(f"<tr{css}>" + "".join(f"<td>{_e(c)}</td>" for c in cells[:-1])
                    + f"<td{flag}>{_e(cells[-1])}</td></tr>")
    return f"<h2>Trials</h2><table><tr>{head}</tr>{''.join(rows)}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _e(value: Any) -> str:
    return html.escape(str(value))


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
