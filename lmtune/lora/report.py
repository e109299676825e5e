"""What a LoRA run leaves for people: results.json, summary.md, best.yaml and the adapter's model card."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from lmtune import attrs
from lmtune.files import write_atomic
from lmtune.finetune.scores import constant_of, last_metrics, learned_nothing
from lmtune.lora.recipe import model_card, trl_config
from lmtune.runtime.trials import counted_trials
from lmtune.space import SearchSpace
from lmtune.trajectory import learned_sentences, summarize_study

log = logging.getLogger(__name__)
#: Samplers that draw every trial the same way: no start-up phase, no model.
SAMPLERS_WITHOUT_MODEL = ("random",)


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per counted trial: state, value, params, seconds, steps, its last validation metrics, the reason of
    a failure (or of pruning), and whether it learned nothing (no better than a constant answer)."""
    constant, maximize = constant_of(study)
    rows = []
    for t in sorted(counted_trials(study), key=lambda t: t.number):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        hyperparams = t.user_attrs.get(attrs.HYPERPARAMS) or {}
        reason = t.user_attrs.get(attrs.FAIL_REASON)
        if t.state == TrialState.PRUNED and reason is None and t.intermediate_values:
            step = max(t.intermediate_values)
            reason = f"pruned at step {step} ({t.intermediate_values[step]:.4g})"
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "value": t.value if t.state == TrialState.COMPLETE else None,
            "params": t.params,
            "seconds": None if seconds is None else round(seconds, 2),
            "steps": t.user_attrs.get(attrs.TRAIN_STEPS),
            "batch_size": t.params.get("batch_size", hyperparams.get("batch_size")),
            "metrics": last_metrics(t),
            "fail_reason": reason,
            "learned_nothing": learned_nothing(constant, t, maximize),
        })
    return rows


def startup_of(sampler: str, startup_trials: int) -> int | None:
    """The random start-up trials a sampler takes before its model proposes; None for ``random``, which has none."""
    return None if sampler in SAMPLERS_WITHOUT_MODEL else startup_trials


def warn_startup(sampler: str, startup_trials: int, trials: int) -> None:
    """Say at the start when every trial of the budget is a random start-up trial, so the sampler named never
    proposes one (``lmtune lora --trials 4 --sampler gp`` once ran four random trials without a word)."""
    if startup_of(sampler, startup_trials) is not None and startup_trials >= trials:
        log.warning("`startup_trials` %d >= `trials` %d: every trial is a random start-up trial and %s's model "
                    "proposes none; lower `startup_trials` or raise `trials`", startup_trials, trials, sampler)


def model_chosen(study: optuna.Study, startup: int | None) -> list[int]:
    """The trials the sampler's model proposed: those started after ``startup`` trials had finished with a score
    (Optuna's samplers count complete and pruned trials; language-BO counts its observations the same way).
    Exact for one process; with workers, a trial's neighbours may still have been running when it started."""
    if startup is None:
        return []
    trials = sorted(counted_trials(study), key=lambda t: t.number)
    scored = [t.datetime_complete for t in trials
              if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.datetime_complete is not None]
    return [t.number for t in trials if t.datetime_start is not None
            and sum(done <= t.datetime_start for done in scored) >= startup]


def sampler_lines(results: dict[str, Any]) -> list[str]:
    """Which trials the sampler's model chose, and which were its random start-up trials."""
    startup, chosen = results.get("startup_trials"), results.get("model_trials") or []
    if startup is None:
        return []
    numbers = [r["number"] for r in results["trials"]]
    if not chosen:
        return [f"- **warning**: sampler `{results['sampler']}` chose no trial: all {len(numbers)} were random "
                f"start-up trials (`startup_trials` {startup})"]
    others = [n for n in numbers if n not in chosen]
    return [f"- sampler `{results['sampler']}`: its model chose trial(s) {_numbers(chosen)}"
            + (f"; {_numbers(others)} were random start-up trials (`startup_trials` {startup})" if others else "")]


def _numbers(numbers: list[int]) -> str:
    """0-4, 7, 9: runs of consecutive trial numbers as ranges."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def final_run_attr(final: dict[str, Any], best_number: int) -> dict[str, Any]:
    """The final run as a report shows it (``attrs.FINAL_RUN``): the test score and what it was measured on."""
    also = {"test loss": f"{final['test_loss']:.4f}", "training": f"{final['train_seconds']:.1f} s"}
    return {"metric": final["metric_name"], "score": final["test_metric"], "split": "test", "also": also,
            "what": f"trial {best_number}'s config retrained on the full training split ({final['train_examples']} "
                    "examples) and tested on the held-out test split", "warning": final.get("warning")}


def final_metrics(results: dict[str, Any]) -> dict[str, float]:
    """The numbers of a run's final run for a tracker: the best trial's proxy scores and, after the retrain, its
    test scores."""
    best = results["best"]
    metrics = {f"proxy_{k}": float(v) for k, v in (best.get("proxy_metrics") or {}).items()}
    final = results.get("final")
    if final:
        metrics.update({f"test_{final['metric_name']}": float(final["test_metric"]),
                        "test_loss": float(final["test_loss"]), "train_seconds": float(final["train_seconds"])})
    return metrics


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


def write_trl(out_dir: Path, results: dict[str, Any], train_rows: list[dict]) -> list[Path]:
    """For a causal task, ``best.trl.yaml`` (the best config for ``trl sft --config``) and the training split it
    reads (``trl-data/train.jsonl``: prompt and completion, or chat ``messages``, TRL's conversational rows);
    nothing for a classifier, which TRL does not train."""
    if results["task"] != "causal":
        return []
    import torch

    data, cuda = out_dir / "trl-data", torch.cuda.is_available()
    header, fields = trl_config(results, data.resolve(), (out_dir / "trl-adapter").resolve(), cuda=cuda,
                                bf16=cuda and torch.cuda.is_bf16_supported())
    lines = "".join(json.dumps({"messages": r["messages"]} if "messages" in r else
                               {"prompt": r["prompt"], "completion": r["response"]}) + "\n" for r in train_rows)
    return [write_atomic(data / "train.jsonl", lines),
            write_atomic(out_dir / "best.trl.yaml", header + yaml.safe_dump(fields, sort_keys=False))]


def write_run(out_dir: Path, results: dict[str, Any]) -> list[Path]:
    """Write what a run found (``results``: ``LoraResult.to_dict()``), each file atomically: ``best.yaml`` (the
    recipe's lmtune config, with a comment saying what it reproduces), the adapter's model card after a final
    run, ``results.json`` and ``summary.md``. Returns their paths."""
    best_yaml, best = out_dir / "best.yaml", results["best"]
    note = (f"lmtune lora --config {best_yaml}\ntrains trial {best['trial']} of study {results['study_name']} again "
            f"({results['metric_name']} {best['proxy_metric']:.4f} on validation): the same model, data, proxy subset "
            "and seed, then retrains it on the full training split and tests it.")
    header = "".join(f"# {line}\n" for line in note.splitlines())
    written = [write_atomic(best_yaml, header + yaml.safe_dump(results["recipe"]["lmtune"], sort_keys=False))]
    if results["final"] is not None:
        written.append(write_atomic(Path(results["final"]["adapter_dir"]) / "README.md", model_card(results)))
    written.append(write_atomic(out_dir / "results.json", json.dumps(results, indent=2, default=str) + "\n"))
    written.append(write_atomic(out_dir / "summary.md", markdown_summary(results)))
    return written


def proxy_lines(results: dict[str, Any]) -> list[str]:
    """What each trial trained and what the search spent, next to a full run."""
    proxy, spent = results.get("proxy"), results.get("spent")
    lines = []
    if proxy:
        shares = ", ".join(f"{share:.0%} at batch {b}" for b, share in proxy["cost_share_by_batch"].items())
        lines.append(f"- proxy: {proxy['rule']}, drawn from {proxy['rows']} of {proxy['train_rows']} training "
                     f"rows, ranked by validation {proxy['metric']}; one trial costs {shares} of a full run's "
                     "training examples")
    if spent:
        budget = [f"{results[k]:g} {unit}" for k, unit in (("budget_steps", "steps"), ("budget_seconds", "s"))
                  if results.get(k)]
        lines.append(f"- spent: {spent['trials']} trials ({spent['complete']} complete, {spent['pruned']} pruned "
                     f"by {results.get('pruner') or 'none'}, {spent['failed']} failed), {spent['steps']} optimizer "
                     f"steps, {spent['seconds']:.0f} s, {spent['full_runs']:g} full runs' worth of training examples"
                     + (f" (budget {', '.join(budget)})" if budget else ""))
    return lines


def memory_lines(results: dict[str, Any]) -> list[str]:
    """Which earlier studies and tables the sampler remembered, and whether its memory gate kept them."""
    memory = results.get("memory")
    if not memory:
        return []
    if not memory["used"]:
        return [f"- memory: none used (asked for: {', '.join(memory['requested'])})"]
    used = ", ".join(f"`{m['name']}` ({m['results']} results)" for m in memory["used"])
    gate = memory.get("gate") or {}
    if not gate:
        verdict = "the sampler reports no memory gate"
    elif not gate.get("gate"):
        verdict = "used without a memory gate"
    elif gate.get("kept") is None:
        verdict = "the memory gate had not judged them yet"
    else:
        verdict = ("the memory gate kept them at the last fit" if gate["kept"] else "the memory gate dropped them at "
                   "the last fit: this study's own results predicted better without them")
    return [f"- memory: {used}; {verdict}"]


def markdown_summary(results: dict[str, Any]) -> str:
    """summary.md: the run in a few lines, the best config, what the study learned and a table of the trials."""
    proxy = results.get("proxy") or {}
    pool = (f"{results['proxy_fraction']:.0%} proxy subset ({results['proxy_examples']} examples)" if not proxy
            else f"proxy of {proxy['rule'].split(':')[0]} on {results['proxy_examples']} examples")
    lines = [
        f"# lmtune lora: {results['study_name']}",
        "",
        f"Model `{results['model']}` on `{results['dataset']}`, space `{results['space']}`, "
        f"sampler `{results['sampler']}`, {len(results['trials'])} trials on a {pool}.",
        "",
        "## Best config",
        "",
        "| parameter | value |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in results["best"]["hyperparams"].items()],
        "",
        *best_lines(results),
        *learned_markdown(results.get("learned") or []),
        *trial_table(results),
    ]
    return "\n".join(lines) + "\n"


def best_lines(results: dict[str, Any]) -> list[str]:
    """The best config's scores, the proxy, what the search spent, what learned nothing, the final run."""
    metric, best = results["metric_name"], results["best"]
    others = ", ".join(f"{k} {v:.4f}" for k, v in (best.get("proxy_metrics") or {}).items() if k != metric)
    lines = [f"- proxy validation {metric}: {best['proxy_metric']:.4f} (trial {best['trial']})"
             + (f"; {others}" if others else ""), *sampler_lines(results), *proxy_lines(results),
             *memory_lines(results)]
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
        test_metric = final.get("metric_name", metric)
        lines.append(f"- full training split ({final['train_examples']} examples), test {test_metric}: "
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
    return lines


def trial_table(results: dict[str, Any]) -> list[str]:
    """The trials as a Markdown table: their last validation metrics, parameters, steps, seconds and a note."""
    names = list(results["trials"][0]["params"]) if results["trials"] else []
    shown = sorted({k for r in results["trials"] for k in r.get("metrics") or {}})
    lines = [
        "",
        "## Trials",
        "",
        "| # | state | " + " | ".join(shown or [results["metric_name"]]) + " | " + " | ".join(names)
        + " | steps | seconds | note |",
        "| " + " | ".join(["---"] * (len(names) + len(shown or [results["metric_name"]]) + 5)) + " |",
    ]
    for r in results["trials"]:
        if shown:
            values = [f"{r['metrics'][k]:.4f}" if k in (r.get("metrics") or {}) else "" for k in shown]
        else:
            values = ["" if r["value"] is None else f"{r['value']:.4f}"]
        cells = [str(r["params"].get(n, "")) for n in names]
        note = r["fail_reason"] or r.get("learned_nothing") or ""
        lines.append(f"| {r['number']} | {r['state']} | " + " | ".join(values) + " | " + " | ".join(cells)
                     + f" | {r.get('steps') or ''} | {r['seconds'] if r['seconds'] is not None else ''} | {note} |")
    return lines
