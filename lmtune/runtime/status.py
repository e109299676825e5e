"""``lmtune status``: where a study stands, from any machine: trials by state, best so far, workers, compute.

Reads storage only, so it is safe to run while workers are busy.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState
from pydantic import BaseModel, ConfigDict, Field

from lmtune import attrs
from lmtune.config import build_config
from lmtune.results import Result
from lmtune.runtime.storage import STORAGE_HELP, make_storage, mask_url, normalize_url
from lmtune.runtime.study import find_study
from lmtune.runtime.trials import counted_among, describe_failure, is_budget_stub, retried_numbers

#: A worker counts as seen recently if it started or finished a trial this many seconds ago, or runs one.
RECENT_SECONDS = 600


class StatusConfig(BaseModel):
    """Everything ``lmtune status`` takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    study: str = Field(min_length=1, description="name of the study",
                       json_schema_extra={"flags": ["--study", "--study-name"]})
    storage: str | None = Field(None, description=STORAGE_HELP, json_schema_extra={"metavar": "URL"})
    as_json: bool = Field(False, description="print the status as JSON", json_schema_extra={"flags": ["--json"]})
    recent_seconds: int = Field(RECENT_SECONDS, ge=1, description="a worker counts as seen recently if it started "
                                "or finished a trial this many seconds ago", json_schema_extra={"cli": False})


@dataclass
class StudyStatus(Result):
    """Where a study stands (``format_status`` prints it; ``to_dict`` is ``lmtune status --json``)."""

    study_name: str
    storage: str
    direction: str
    budget: int | None
    counted: int
    states: dict[str, int]
    counted_states: dict[str, int]
    retried: int
    best: dict[str, Any] | None
    workers_recent: list[dict[str, Any]]
    workers_total: int
    compute_seconds: float
    spend: float | None
    failures: list[dict[str, Any]]
    agent: dict[str, Any] | None = None
    advisor: dict[str, Any] | None = None


def agent_summary(trials: list) -> dict[str, Any] | None:
    """How the agent sampler did: suggestions asked of the model, how many fell back to TPE (the rate), and
    tokens and seconds per suggestion. None when no trial was proposed by an ``AgentSampler``."""
    asked = [t for t in trials if t.user_attrs.get(attrs.AGENT_SOURCE) in ("agent", "fallback")]
    if not asked:
        return None
    fell = [t for t in asked if t.user_attrs.get(attrs.AGENT_FELL_BACK)]

    def mean(key: str) -> float:
        return sum(float(t.user_attrs.get(key, 0) or 0) for t in asked) / len(asked)

    return {"suggestions": len(asked), "fell_back": len(fell), "fallback_rate": round(len(fell) / len(asked), 4),
            "retries": sum(int(t.user_attrs.get(attrs.AGENT_RETRIES, 0) or 0) for t in asked),
            "prompt_tokens_per_suggestion": round(mean(attrs.AGENT_PROMPT_TOKENS), 1),
            "reply_tokens_per_suggestion": round(mean(attrs.AGENT_REPLY_TOKENS), 1),
            "seconds_per_suggestion": round(mean(attrs.AGENT_SECONDS), 3),
            "cost": round(sum(float(t.user_attrs.get(attrs.AGENT_COST, 0) or 0) for t in asked), 6),
            "last_fallback": next((str(t.user_attrs.get(attrs.AGENT_FALLBACK_REASON)) for t in reversed(fell)), None)}


def advisor_overrides(trials: list) -> list[dict[str, Any]]:
    """The trials whose config the agent set in centaur mode, in order: number, the proposal it replaced, the config
    and the model's reason (what ``lmtune status`` and the report list)."""
    return [{"number": t.number, "proposal": t.user_attrs.get(attrs.AGENT_PROPOSAL), "config": t.params,
             "reason": t.user_attrs.get(attrs.AGENT_REASON, "")}
            for t in sorted(trials, key=lambda t: t.number) if t.user_attrs.get(attrs.AGENT_SOURCE) == "override"]


def advisor_summary(trials: list) -> dict[str, Any] | None:
    """How the agent did as an advisor (centaur mode): trials it overrode and their share of the trials, trials it
    was asked on, what became of the others' proposals (``attrs.AGENT_ADVICE``), tokens and seconds per trial asked.
    None when no trial went through a ``CentaurSampler``."""
    advised = [t for t in trials if t.user_attrs.get(attrs.AGENT_SOURCE) in ("base", "override")]
    if not advised:
        return None
    sourced = [t for t in trials if attrs.AGENT_SOURCE in t.user_attrs]
    advice = Counter(str(t.user_attrs.get(attrs.AGENT_ADVICE)) for t in advised)
    asked = [t for t in advised if attrs.AGENT_PROMPT_TOKENS in t.user_attrs]
    overrides = advisor_overrides(trials)

    def mean(key: str) -> float:
        return sum(float(t.user_attrs.get(key, 0) or 0) for t in asked) / len(asked) if asked else 0.0

    return {"trials": len(sourced), "overrides": len(overrides),
            "override_share": round(len(overrides) / len(sourced), 4), "asked": len(asked),
            "kept": advice["kept"], "refused": advice["refused"], "endpoint_failed": advice["endpoint failed"],
            "endpoint_skipped": advice["endpoint skipped"], "share_used": advice["share used"],
            "prompt_tokens_per_ask": round(mean(attrs.AGENT_PROMPT_TOKENS), 1),
            "reply_tokens_per_ask": round(mean(attrs.AGENT_REPLY_TOKENS), 1),
            "seconds_per_ask": round(mean(attrs.AGENT_SECONDS), 3),
            "cost": round(sum(float(t.user_attrs.get(attrs.AGENT_COST, 0) or 0) for t in asked), 6),
            "overridden": overrides}


def study_status(config: StatusConfig | None = None, *, now: dt.datetime | None = None, **fields: Any
                 ) -> StudyStatus:
    """Trials by state, best so far, workers seen recently, compute and spend of a study (storage is only read)."""
    cfg = config or build_config(StatusConfig, **fields)
    study_name, storage, recent_seconds = cfg.study, cfg.storage, cfg.recent_seconds
    store = make_storage(storage, existing=True)
    summary = find_study(store, study_name, storage)
    study = optuna.load_study(study_name=study_name, storage=store)
    trials = [t for t in study.get_trials(deepcopy=False) if not is_budget_stub(t)]
    now = now or dt.datetime.now()
    retried = retried_numbers(trials)
    counted = counted_among(trials)

    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = None
    if complete:
        pick = max if summary.direction.name == "MAXIMIZE" else min
        b = pick(complete, key=lambda t: t.value)
        # a LoRA trial's config as it trained (alpha, not alpha_ratio), as summary.md and results.json show it
        best = {"number": b.number, "value": b.value, "params": b.user_attrs.get(attrs.HYPERPARAMS) or b.params,
                "metric": (study.metric_names or [b.user_attrs.get(attrs.METRIC_NAME, "value")])[0]}

    def seconds(t) -> float:
        end = t.datetime_complete or (now if t.state == TrialState.RUNNING else None)
        return (end - t.datetime_start).total_seconds() if end and t.datetime_start else 0.0

    workers: dict[str, dict[str, Any]] = {}
    for t in trials:
        name = t.user_attrs.get(attrs.WORKER)
        if name is None or t.datetime_start is None:
            continue
        w = workers.setdefault(name, {"worker": name, "trials": 0, "running": [], "last_seen": t.datetime_start})
        w["trials"] += 1
        if t.state == TrialState.RUNNING:
            w["running"].append(t.number)
        w["last_seen"] = max(w["last_seen"], t.datetime_complete or t.datetime_start)
    recent = [w for w in workers.values()
              if w["running"] or (now - w["last_seen"]).total_seconds() <= recent_seconds]
    costs = [float(t.user_attrs[attrs.SPEND]) for t in trials if attrs.SPEND in t.user_attrs]
    return StudyStatus(
        study_name=study_name,
        storage=mask_url(normalize_url(storage)),
        direction=summary.direction.name.lower(),
        budget=summary.user_attrs.get(attrs.BUDGET),
        counted=len(counted),
        states={s.name: sum(1 for t in trials if t.state == s) for s in TrialState},
        counted_states=dict(Counter(t.state.name for t in counted)),
        retried=len(retried),
        best=best,
        workers_recent=sorted(({**w, "last_seen": w["last_seen"].isoformat(timespec="seconds"),
                                "idle_seconds": round((now - w["last_seen"]).total_seconds())}
                               for w in recent), key=lambda w: w["worker"]),
        workers_total=len(workers),
        compute_seconds=round(sum(seconds(t) for t in trials), 1),
        spend=round(sum(costs), 6) if costs else None,
        failures=[{"number": t.number, "reason": describe_failure(t), "retried": t.number in retried}
                  for t in trials if t.state == TrialState.FAIL],
        agent=agent_summary(trials),
        advisor=advisor_summary(trials),
    )


def format_status(status: StudyStatus) -> str:
    """The summary as a few lines of text for the terminal."""
    status = status.to_dict()
    states = ", ".join(f"{n} {s}" for s, n in status["states"].items() if n) or "no trials"
    budget = status["budget"]
    lines = [f"study {status['study_name']} in {status['storage']} ({status['direction']})",
             f"trials: {status['counted']} of {budget if budget is not None else '?'} counted; {states}"
             + (f"; {status['retried']} retried" if status["retried"] else "")]
    best = status["best"]
    lines.append(f"best: trial {best['number']} {best['metric']} {best['value']:.6g} {best['params']}" if best
                 else "best: none yet (no COMPLETE trial)")
    workers = status["workers_recent"]
    lines.append(f"workers seen in the last {RECENT_SECONDS // 60} min: {len(workers)} (of {status['workers_total']})")
    for w in workers:
        doing = f"running trial {', '.join(map(str, w['running']))}" if w["running"] else (
            f"idle {w['idle_seconds']} s")
        lines.append(f"  {w['worker']}: {w['trials']} trials, {doing}")
    hours = status["compute_seconds"] / 3600
    spend = f", spend {status['spend']:.6g}" if status["spend"] is not None else ""
    lines.append(f"compute: {status['compute_seconds']:.1f} trial-seconds ({hours:.2f} h){spend}")
    agent = status.get("agent")
    if agent:
        lines.append(f"agent: {agent['fell_back']} of {agent['suggestions']} suggestions fell back to TPE "
                     f"({agent['fallback_rate']:.0%}), {agent['retries']} replies rejected; per suggestion "
                     f"{agent['prompt_tokens_per_suggestion']:.0f} prompt + {agent['reply_tokens_per_suggestion']:.0f}"
                     f" reply tokens, {agent['seconds_per_suggestion']:.2f} s"
                     + (f"; last fallback: {agent['last_fallback'][:120]}" if agent["last_fallback"] else ""))
    lines += _advisor_lines(status.get("advisor"))
    for f in status["failures"][-5:]:
        lines.append(f"  FAIL trial {f['number']}: {f['reason']}" + (" (retried)" if f["retried"] else ""))
    return "\n".join(lines)


def _advisor_lines(advisor: dict[str, Any] | None) -> list[str]:
    """The agent in centaur mode: its overrides, what it did when asked, and the last few overrides' reasons."""
    if not advisor:
        return []
    counts = [f"{advisor[key]} {words}" for key, words in (
        ("kept", "kept the proposal"), ("refused", "refused"), ("endpoint_failed", "endpoint failed"))
        if advisor[key]]
    lines = [f"agent (centaur): {advisor['overrides']} of {advisor['trials']} trials overridden "
             f"({advisor['override_share']:.0%}); asked on {advisor['asked']}"
             + (f": {', '.join(counts)}" if counts else "")
             + (f"; endpoint skipped on {advisor['endpoint_skipped']}" if advisor["endpoint_skipped"] else "")
             + (f"; per trial asked {advisor['prompt_tokens_per_ask']:.0f} prompt + "
                f"{advisor['reply_tokens_per_ask']:.0f} reply tokens, {advisor['seconds_per_ask']:.2f} s"
                if advisor["asked"] else "")]
    for override in advisor["overridden"][-5:]:
        lines.append(f"  override trial {override['number']}: {override['reason'][:120]}")
    return lines
