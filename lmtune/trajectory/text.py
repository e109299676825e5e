"""The TCS report as words: compact text for a language model's prompt, and plain sentences for people.

The compact text of a 30-trial LoRA study fits in about 1,500 tokens (``tests/trajectory`` counts them with
the WordPiece tokenizer of the offline MiniLM encoder, which splits numbers and punctuation more finely than
the byte-level BPE tokenizers of chat models, so the count is an upper estimate for those).
"""

from __future__ import annotations

from typing import Any

#: Trials listed one per line; a longer study lists the best and the most recent ``LIST_TRIALS // 2`` each.
LIST_TRIALS = 40


def report_text(report: dict[str, Any]) -> str:
    """The report as compact text: a header, the effects, one line per trial, and what is still untried."""
    names = list(report["space"])
    metric = report["metric"]
    counts = ", ".join(f"{n} {s}" for s, n in report["counts"].items()) or "none yet"
    lines = [f"Goal: {report['direction']} {metric}. Trials: {counts}."]
    if "pool" in report:
        lines[-1] += f" {report['pool']['tried']} of {report['pool']['size']} configs tried."
    lines.append("Space: " + "; ".join(f"{n} {_space(spec)}" for n, spec in report["space"].items()))
    best = report["best"]
    lines.append(f"Best: trial {best['trial']}, {metric} {_num(best['value'])}: {_config(best['config'])}" if best
                 else "Best: none yet")
    lines.append(f"Parameters (effect = Spearman rho of value vs {metric}, sign oriented so + means higher values "
                 "scored better; tried values with count and best score):")
    for name, history in report["params"].items():
        tried = ", ".join(f"{v} x{h['n']}" + (f" best {_num(h['best'])}" if "best" in h else "")
                          for v, h in history["tried"].items())
        lines.append(f"- {name}: {_effect(history.get('effect'))}. Tried: {tried or 'nothing'}")
    lines.append(f"Trials ({', '.join(names)} -> {metric}; curve):")
    for row in _listed(report):
        lines.append(_trial_line(row, names))
    if report["running"]:
        lines.append("Running now (do not propose these): " + "; ".join(
            f"trial {r['trial']} {_config(r['config'])}" for r in report["running"]))
    untried = report["untried"]
    lines.append("Not tried yet: " + ("; ".join(f"{n} {', '.join(v)}" for n, v in untried.items()) if untried
                                      else "every value has been tried"))
    return "\n".join(lines) + "\n"


def learned_sentences(report: dict[str, Any]) -> list[str]:
    """What a finished study learned, in plain sentences for ``summary.md`` (no model needed)."""
    metric = report["metric"]
    sentences = []
    effects = [(n, h["effect"]) for n, h in report["params"].items() if "rho" in h.get("effect", {})]
    effects.sort(key=lambda ne: (-abs(ne[1]["rho"]), ne[0]))
    for i, (name, e) in enumerate(effects):
        better = "higher" if e["rho"] > 0 else "lower"
        stats = f"Spearman rho {e['rho']:+.2f} over {e['trials']} completed trials"
        if e["strength"] == "none":
            sentences.append(f"{name} made little difference to {metric} ({stats}).")
        else:
            lead = f"{name} mattered most" if i == 0 and e["strength"] == "strong" else (
                f"{name} had a {e['strength']} effect")
            sentences.append(f"{lead}: {better} values scored better ({stats}).")
    for name, h in report["params"].items():
        e = h.get("effect", {})
        if "best_mean" in e:
            sentences.append(f"For {name}, {e['best_mean']} scored best on average and {e['worst_mean']} worst "
                             f"({e['trials']} completed trials).")
        elif not e:
            sentences.append(f"Too few completed trials with different values to say how {name} matters.")
    flagged = {flag: [r["number"] for r in report["trials"] if flag in r.get("curve", {}).get("flags", [])]
               for flag in ("overfitting", "diverged", "still improving", "underfitting", "plateau", "spiky")}
    words = {
        "overfitting": ("overfit: validation loss rose above its lowest point while training loss kept falling", ""),
        "diverged": ("diverged: the training loss blew up or became NaN", ""),
        "still improving": ("were still improving when training stopped", "; a longer run may reach more"),
        "underfitting": ("barely learned: training loss fell less than 5% from the first quarter of the run to the "
                         "last", ""),
        "plateau": ("plateaued: validation loss stopped falling between the last two evaluations", ""),
        "spiky": ("had spiky training loss (steps far above the running median)",
                  "; a lower learning rate or a larger batch may steady them"),
    }
    for flag, numbers in flagged.items():
        if numbers:
            what, advice = words[flag]
            sentences.append(f"{_trials(numbers)} {what}{advice}.")
    failed = report["failed"]
    if failed:
        shown = "; ".join(f"trial {f['trial']} ({f['reason']})" for f in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        sentences.append(f"{len(failed)} trial{'s' if len(failed) > 1 else ''} failed: {shown}{more}.")
    if report["untried"]:
        sentences.append("Never tried: " + "; ".join(f"{n} {', '.join(v)}" for n, v in report["untried"].items())
                         + ".")
    return sentences


# -- formatting ---------------------------------------------------------------------------------------------

def _listed(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [r for r in report["trials"] if r["state"] != "RUNNING"]
    if len(rows) <= LIST_TRIALS:
        return rows
    half = LIST_TRIALS // 2
    maximize = report["direction"] == "maximize"
    scored = sorted((r for r in rows if r.get("value") is not None),
                    key=lambda r: (-r["value"] if maximize else r["value"], r["number"]))
    keep = {r["number"] for r in scored[:half]} | {r["number"] for r in rows[-half:]}
    return [r for r in rows if r["number"] in keep]


def _trial_line(row: dict[str, Any], names: list[str]) -> str:
    values = ",".join(_val(row["config"].get(n, "?")) for n in names)
    if row["state"] == "COMPLETE":
        outcome = _num(row.get("value"))
    else:
        outcome = row["state"] + (f" {row['reason']}" if row.get("reason") else "")
    parts = [f"{row['number']}: {values} -> {outcome}"]
    if "cost" in row:
        parts.append(f"cost {_num(row['cost'])}")
    curve = row.get("curve")
    if curve:
        bits = []
        if curve.get("best_step") is not None and curve.get("best_value") != curve.get("final_value"):
            bits.append(f"best {_num(curve['best_value'])} at step {curve['best_step']}")
        if curve.get("gap_trend") in ("widening", "narrowing"):  # a steady gap says little; the JSON keeps it
            bits.append(f"val-train loss gap {curve['gap']:+.2g} {curve['gap_trend']}")
        bits += curve.get("flags", [])
        if bits:
            parts.append(", ".join(bits))
    return "; ".join(parts)


def _effect(effect: dict[str, Any] | None) -> str:
    if not effect:
        return "effect unknown yet"
    if "rho" in effect:
        if effect["strength"] == "none":
            return f"no clear effect (rho {effect['rho']:+.2f})"
        return f"{effect['better']} is better, {effect['strength']} (rho {effect['rho']:+.2f})"
    return f"best mean {effect['best_mean']}, worst {effect['worst_mean']}"


def _space(spec: dict[str, Any]) -> str:
    if spec["type"] == "categorical":
        return "{" + ",".join(_val(c) for c in spec["choices"]) + "}"
    scale = " log" if spec.get("log") else ""
    if spec["type"] == "ordered":
        return "ordered {" + ",".join(_val(c) for c in spec["values"]) + "}" + scale
    step = f" step {spec['step']}" if spec.get("step") not in (None, 1) else ""
    return f"{spec['type']} [{_val(spec['low'])}, {_val(spec['high'])}]{scale}{step}"


def _config(config: dict[str, Any]) -> str:
    return " ".join(f"{k}={_val(v)}" for k, v in config.items())


def _trials(numbers: list[int]) -> str:
    if len(numbers) == 1:
        return f"Trial {numbers[0]}"
    return "Trials " + ", ".join(map(str, numbers[:-1])) + f" and {numbers[-1]}"


def _val(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 1e15):
        return str(int(value))
    return f"{float(value):.4g}"


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4g}"
