"""Turn a finished study into files a person reads: results.json and a short Markdown summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lmtune import attrs
from lmtune.files import write_atomic
from lmtune.runtime.trials import constant_of, counted_trials, learned_nothing
from lmtune.space import SearchSpace
from lmtune.trajectory import learned_sentences, summarize_study


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per counted trial: state, value, params, seconds, the reason of a failure, and whether it learned
    nothing (no better than a constant answer)."""
    constant, maximize = constant_of(study)
    rows = []
    for t in sorted(counted_trials(study), key=lambda t: t.number):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "value": t.value if t.state == TrialState.COMPLETE else None,
            "params": t.params,
            "seconds": None if seconds is None else round(seconds, 2),
            "fail_reason": t.user_attrs.get(attrs.FAIL_REASON),
            "learned_nothing": learned_nothing(constant, t, maximize),
        })
    return rows


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    return study.best_trial if complete else None


def study_learned(study: optuna.Study, space: SearchSpace | None = None, metric: str | None = None) -> list[str]:
    """What the study learned, as plain sentences from the Trajectory Context Summarizer's report: which
    parameters mattered and how, which trials overfit, diverged or were still improving, what failed. No model."""
    return learned_sentences(summarize_study(study, space=space, metric=metric))


def learned_markdown(sentences: list[str]) -> list[str]:
    """The "What the study learned" section of a summary, as Markdown lines (nothing without sentences)."""
    if not sentences:
        return []
    return ["", "## What the study learned", "", *[f"- {s}" for s in sentences]]


def write_results(out_dir: Path, results: dict[str, Any]) -> tuple[Path, Path]:
    """Write results.json and summary.md (each atomically); returns their paths."""
    json_path = write_atomic(out_dir / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    md_path = write_atomic(out_dir / "summary.md", markdown_summary(results))
    return json_path, md_path


def markdown_summary(results: dict[str, Any]) -> str:
    metric = results["metric_name"]
    best = results["best"]
    lines = [
        f"# lmtune lora: {results['study_name']}",
        "",
        f"Model `{results['model']}` on `{results['dataset']}`, space `{results['space']}`, "
        f"sampler `{results['sampler']}`, {len(results['trials'])} trials on a "
        f"{results['proxy_fraction']:.0%} proxy subset ({results['proxy_examples']} examples).",
        "",
        "## Best config",
        "",
        "| parameter | value |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in best["hyperparams"].items()],
        "",
        f"- proxy validation {metric}: {best['proxy_metric']:.4f} (trial {best['trial']})",
    ]
    constant = results.get("constant_score")
    if constant:
        lines.append(f"- trials at or below {constant['value']:.4f} {constant.get('label', 'learned nothing')}: "
                     f"{constant['what']}")
    if best.get("learned_nothing"):
        lines.append(f"- **warning**: the best trial {best['learned_nothing']}")
    nothing = [r["number"] for r in results["trials"] if r.get("learned_nothing")]
    if nothing:
        lines.append(f"- {len(nothing)} of {len(results['trials'])} trials learned nothing (note column)")
    final = results.get("final")
    if final:
        lines.append(f"- full training split ({final['train_examples']} examples), test {metric}: "
                     f"{final['test_metric']:.4f}, test loss {final['test_loss']:.4f}, "
                     f"{final['train_seconds']:.1f} s training")
        lines.append(f"- adapter: `{final['adapter_dir']}`")
        if final.get("warning"):
            lines.append(f"- **warning**: {final['warning']}")
    if results.get("recipe"):
        lines.append("- the whole recipe: `recipe` in `results.json`; train it again with "
                     "`lmtune lora --config best.yaml`")
    seconds = [r["seconds"] for r in results["trials"] if r["seconds"] is not None]
    if seconds:
        lines.append(f"- time per trial: mean {sum(seconds) / len(seconds):.1f} s, max {max(seconds):.1f} s")
    lines += learned_markdown(results.get("learned") or [])
    names = list(results["trials"][0]["params"]) if results["trials"] else []
    lines += [
        "",
        "## Trials",
        "",
        "| # | state | " + metric + " | " + " | ".join(names) + " | seconds | note |",
        "| " + " | ".join(["---"] * (len(names) + 5)) + " |",
    ]
    for r in results["trials"]:
        value = "" if r["value"] is None else f"{r['value']:.4f}"
        cells = [str(r["params"].get(n, "")) for n in names]
        note = r["fail_reason"] or r.get("learned_nothing") or ""
        lines.append(f"| {r['number']} | {r['state']} | {value} | " + " | ".join(cells)
                     + f" | {r['seconds'] if r['seconds'] is not None else ''} | {note} |")
    return "\n".join(lines) + "\n"
