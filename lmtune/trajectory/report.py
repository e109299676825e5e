"""The Trajectory Context Summarizer across trials: a deterministic report of a whole study.

Per trial: its config, score, the curve summary of ``curves`` (LoRA trials and benchmark rows), cost
(inference trials), or why it failed. Across trials: the best so far, per-parameter history, the sign and
strength of each parameter's effect (Spearman's rank correlation over the completed trials), failed configs
with reasons, configs running now (other workers' trials) and values of the space no trial has tried.

Pure: the same trials give the same report, byte for byte (no clocks, sorted keys, rounded numbers).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import optuna
import scipy.stats
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from lmtune import attrs
from lmtune.space import Categorical, Float, Int, Listed, Param, SearchSpace, canonical_value
from lmtune.trajectory.curves import rounded, summarize_curve

#: Completed trials needed before an effect is estimated: fewer give a rank correlation of pure noise.
MIN_EFFECT_TRIALS = 4
#: |Spearman rho| from which an effect is called strong, moderate or weak (Cohen's conventions for r);
#: below the last it is "none".
EFFECT_STRENGTH = ((0.5, "strong"), (0.3, "moderate"), (0.1, "weak"))
#: Parts of a numeric range (in its own scale, log where the parameter is) checked for "not yet tried".
RANGE_BINS = 4


def summarize_study(study: optuna.Study | Sequence[FrozenTrial], *, space: SearchSpace | None = None,
                    direction: str | None = None, metric: str | None = None) -> dict[str, Any]:
    """The TCS report of a study (or of its trials, with ``direction``) as a JSON-ready dict.

    ``space`` is what the study searches (default: read from the trials' distributions); ``metric`` names the
    score in trajectories and text (default: the trials' ``metric_name`` attribute, else ``value``).
    """
    if isinstance(study, optuna.Study):
        trials = study.get_trials(deepcopy=False)
        direction = direction or study.direction.name.lower()
    else:
        trials = list(study)
        direction = direction or "maximize"
    trials = sorted((t for t in trials if not t.user_attrs.get(attrs.BUDGET_REACHED)), key=lambda t: t.number)
    maximize = direction == "maximize"
    space = space or space_of(trials)
    metric = metric or next((str(t.user_attrs[attrs.METRIC_NAME]) for t in trials
                             if attrs.METRIC_NAME in t.user_attrs), "value")
    rows = [_trial_row(t, space, metric, maximize) for t in trials]
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    best = None
    if complete:
        pick = max if maximize else min
        top = pick(complete, key=lambda r: r["value"])
        best = {"trial": top["number"], "value": top["value"], "config": top["config"]}
    counts = {s.name: sum(r["state"] == s.name for r in rows) for s in TrialState}
    report: dict[str, Any] = {
        "direction": direction, "metric": metric,
        "counts": {k: v for k, v in counts.items() if v},
        "space": {p.name: p.to_dict() for p in space.params},
        "best": best,
        "params": {p.name: _param_history(p, rows, maximize) for p in space.params},
        "trials": rows,
        "failed": [{"trial": r["number"], "config": r["config"], "reason": r.get("reason", "")}
                   for r in rows if r["state"] == "FAIL"],
        "running": [{"trial": r["number"], "config": r["config"]} for r in rows if r["state"] == "RUNNING"],
        "untried": _untried(space, rows),
    }
    if space.params and space.is_discrete:
        held = {_key(r["config"], space) for r in rows if r["config"]}
        report["pool"] = {"size": space.pool_size, "tried": len(held)}
    return report


def space_of(trials: Iterable[FrozenTrial]) -> SearchSpace:
    """The parameters the trials were sampled from, read from their Optuna distributions (first seen wins)."""
    params: dict[str, Param] = {}
    for t in trials:
        for name, dist in sorted(t.distributions.items()):
            if name in params:
                continue
            if isinstance(dist, CategoricalDistribution):
                params[name] = Categorical(name, tuple(dist.choices))
            elif isinstance(dist, IntDistribution):
                params[name] = Int(name, dist.low, dist.high, dist.log, dist.step)
            elif isinstance(dist, FloatDistribution):
                params[name] = Float(name, dist.low, dist.high, dist.log, dist.step)
    return SearchSpace(tuple(params.values()), {}, "study")


def effect_label(rho: float | None) -> str:
    if rho is None or not math.isfinite(rho):
        return "unknown"
    for limit, label in EFFECT_STRENGTH:
        if abs(rho) >= limit:
            return label
    return "none"


# -- pieces -------------------------------------------------------------------------------------------------

def _trial_row(t: FrozenTrial, space: SearchSpace, metric: str, maximize: bool) -> dict[str, Any]:
    config = {p.name: _plain(t.params[p.name]) for p in space.params if p.name in t.params}
    row: dict[str, Any] = {"number": t.number, "state": t.state.name, "config": config}
    if t.state == TrialState.COMPLETE and t.value is not None:
        row["value"] = rounded(t.value) if math.isfinite(t.value) else None
    reason = t.user_attrs.get(attrs.FAIL_REASON)
    if t.state in (TrialState.FAIL, TrialState.PRUNED):
        row["reason"] = " ".join(str(reason or "no reason recorded").split())[:160]
    trajectory, losses = t.user_attrs.get(attrs.TRAJECTORY), t.user_attrs.get(attrs.STEP_LOSSES)
    if trajectory or losses:
        row["curve"] = summarize_curve(trajectory, losses, metric, maximize,
                                       failed_reason=str(reason) if reason else None).to_dict()
    cost = t.user_attrs.get(attrs.COST_PER_INSTANCE)
    if isinstance(cost, int | float):
        row["cost"] = rounded(float(cost))
    return row


def _plain(value: Any) -> Any:
    """A parameter value as JSON writes it stably (numbers at the same-value rule's precision)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    return int(value) if isinstance(value, int) else canonical_value(value)


def _key(config: dict[str, Any], space: SearchSpace) -> tuple:
    return tuple(canonical_value(config.get(p.name)) for p in space.params)


def _param_history(param: Param, rows: list[dict[str, Any]], maximize: bool) -> dict[str, Any]:
    """Values tried (with counts and best score), and the effect on the score over the completed trials."""
    scored = [(r["config"][param.name], r["value"]) for r in rows
              if r["state"] == "COMPLETE" and r.get("value") is not None and param.name in r["config"]]
    tried: dict[str, dict[str, Any]] = {}
    for r in rows:
        if param.name in r["config"]:
            entry = tried.setdefault(_text(r["config"][param.name]), {"n": 0})
            entry["n"] += 1
    pick = max if maximize else min
    for value, score in scored:
        entry = tried[_text(value)]
        entry["best"] = score if "best" not in entry else pick(entry["best"], score)
    out: dict[str, Any] = {"tried": dict(sorted(tried.items(), key=lambda kv: _order(param, kv[0])))}
    numeric = [(v, s) for v, s in scored if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numeric) >= MIN_EFFECT_TRIALS and len({v for v, _ in numeric}) >= 2 and len({s for _, s in numeric}) >= 2:
        x, y = np.array(numeric, dtype=float).T
        rho = float(scipy.stats.spearmanr(x, y if maximize else -y).statistic)
        out["effect"] = {"rho": rounded(rho), "strength": effect_label(rho), "trials": len(numeric),
                         "better": "higher" if rho > 0 else "lower"}
    elif len(scored) >= MIN_EFFECT_TRIALS:  # a categorical of words: the choice with the best mean score
        means: dict[str, list[float]] = {}
        for value, score in scored:
            means.setdefault(_text(value), []).append(score)
        if len(means) >= 2:
            ranked = sorted(means, key=lambda k: (-1 if maximize else 1) * np.mean(means[k]))
            out["effect"] = {"best_mean": ranked[0], "worst_mean": ranked[-1], "trials": len(scored)}
    return out


def _order(param: Param, text: str) -> float:
    """Tried values in the space's order (choices as listed, numbers ascending)."""
    if isinstance(param, Listed):
        return float(next((i for i, c in enumerate(param.choices) if _text(c) == text), len(param.choices)))
    try:
        return float(text)
    except ValueError:
        return math.inf


def _text(value: Any) -> str:
    """A value as the report writes it: short, and one spelling per value (``0.001``, ``1e-05``, ``8``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{float(value):.4g}"


def _untried(space: SearchSpace, rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Per parameter: choices, or parts of its range, that no trial (finished or running) has used."""
    out: dict[str, list[str]] = {}
    for p in space.params:
        seen = [r["config"][p.name] for r in rows if p.name in r["config"]]
        if isinstance(p, Listed):
            missing = [_text(c) for c in p.choices if not any(_same(c, v) for v in seen)]
        else:
            missing = [f"{_text(lo)}..{_text(hi)}" for lo, hi in _bins(p)
                       if not any(isinstance(v, int | float) and lo <= v <= hi for v in seen)]
        if missing:
            out[p.name] = missing
    return out


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b or (
        isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool)
        and not isinstance(b, bool) and canonical_value(a) == canonical_value(b))


def _bins(p: Int | Float) -> list[tuple[float, float]]:
    lo, hi = float(p.low), float(p.high)
    if hi <= lo:
        return [(lo, hi)]
    if p.log:
        edges = np.exp(np.linspace(math.log(lo), math.log(hi), RANGE_BINS + 1))
    else:
        edges = np.linspace(lo, hi, RANGE_BINS + 1)
    edges = [float(f"{e:.3g}") for e in edges]
    edges[0], edges[-1] = lo, hi
    return list(zip(edges[:-1], edges[1:], strict=True))
