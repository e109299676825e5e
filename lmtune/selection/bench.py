"""``lmtune bench select``: the paper-style table for budget ratios 8..512, or the leave-one-dataset-out table.

The layout of Table 1 of "Selecting Large Language Model to Fine-tune via Rectified Scaling Law" (arXiv:2402.02314);
``protocol="lodo"`` scores each file with methods designed on the other files (``lmtune.selection.protocol``).
"""

from __future__ import annotations

import json
from pathlib import Path

from lmtune.config import build_config
from lmtune.errors import InputError
from lmtune.selection.config import BenchSelectConfig
from lmtune.selection.curves import load_curves
from lmtune.selection.evaluate import Selection, nan_to_none, sweep, tokens_for
from lmtune.selection.predictors import PROPOSED


def bench_select(config: BenchSelectConfig | None = None, **fields) -> str:
    """PearCorr, RelAcc and compute of every method at every ratio, as Markdown or one JSON object.

    ``single`` (default): the table of each file. The target is the largest size in the file unless given; every
    model needs its true loss there. JSON: ``{method: {ratio: {"pearcorr", "relacc", "flops"}}}`` (scores x100,
    ratios as integer keys) plus the proposed method again under ``"best"``; with several files, one such object
    per file name. ``lodo``: see :func:`lodo_table`. ``design``: the guard's setting chosen on every file given.
    """
    cfg = config or build_config(BenchSelectConfig, **fields)
    ratios = [int(r) for r in cfg.ratios]
    if not ratios or any(r < 2 for r in ratios):
        raise InputError("ratios", f"budget ratios must be integers >= 2, got {ratios}")
    if not cfg.curves:
        raise InputError("curves", "give at least one curves file")
    if cfg.protocol != "single":
        if cfg.target_size is not None:
            raise InputError("target_size", f"`protocol` {cfg.protocol} uses each file's largest size as its target")
        from lmtune.selection.protocol import design_file

        files = [design_file(path, ratios) for path in cfg.curves]
        return lodo_table(files, cfg.as_json) if cfg.protocol == "lodo" else design_report(files, cfg.as_json)
    tables = {Path(path).stem: _single(path, ratios, cfg.as_json, cfg.target_size, cfg.tokens_per_sample)
              for path in cfg.curves}
    if len(tables) != len(cfg.curves):
        raise InputError("curves", "two curves files share a name; rename one")
    if len(tables) == 1:
        return next(iter(tables.values()))
    return json.dumps({k: json.loads(v) for k, v in tables.items()}) if cfg.as_json else "\n".join(tables.values())


def _single(curves_path, ratios: list[int], as_json: bool, target_size: int | None,
            tokens_per_sample: float | None) -> str:
    curves = load_curves(curves_path)
    target = int(target_size or curves.sizes.max())
    if curves.loss_at(target) is None:
        raise InputError("target_size", f"{curves_path} has no loss for every model at size {target}; "
                                        "the benchmark needs the true target losses")
    tokens, note = tokens_for(curves_path, tokens_per_sample)
    table = sweep(curves, target, ratios, tokens_per_sample=tokens)
    if as_json:
        return json.dumps(to_json(table))
    return to_markdown(table, Path(curves_path).name, len(curves.names), note)


def to_json(table: dict[int, Selection]) -> dict:
    out: dict = {}
    for ratio, selection in table.items():
        for method, result in selection.results.items():
            out.setdefault(method, {})[ratio] = {"pearcorr": nan_to_none(result.pearcorr),
                                                  "relacc": nan_to_none(result.relacc), "flops": result.flops}
    out["best"] = out[PROPOSED]
    return out


def to_markdown(table: dict[int, Selection], name: str, n_models: int, note: str | None = None) -> str:
    ratios = list(table)
    first = table[ratios[0]]
    methods = list(first.results)
    lines = [f"Selection on `{name}`: {n_models} models, target size {first.target:,}; each method sees sizes <= "
             f"target/ratio (and D=0). Proposed method: `{PROPOSED}`.", ""]
    for metric in ("pearcorr", "relacc"):
        label = "PearCorr" if metric == "pearcorr" else "RelAcc"
        lines += [f"| {label} | " + " | ".join(methods) + " |", "| --- " * (len(methods) + 1) + "|"]
        for ratio in ratios:
            cells = [_fmt(getattr(table[ratio].results[m], metric)) for m in methods]
            lines.append(f"| 1/{ratio} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Compute: FLOPs = 6 x parameters x tokens over every subset trained; saved = 1 - FLOPs / "
              f"(all candidates on all {first.target:,} examples: {first.full_flops:.3g} FLOPs).", "",
              "| ratio | " + " | ".join(methods) + " |", "| --- " * (len(methods) + 1) + "|"]
    for ratio in ratios:
        cells = []
        for m in methods:
            result = table[ratio].results[m]
            cells.append(f"{result.flops:.3g} ({100 * (1 - result.flops / table[ratio].full_flops):.1f}% saved)")
        lines.append(f"| 1/{ratio} | " + " | ".join(cells) + " |")
    failures = {m: sum(len(table[r].results[m].prediction.failures) for r in ratios
                       if table[r].results[m].prediction is not None) for m in methods}
    errors = [f"{m} at 1/{r}: {table[r].results[m].error}"
              for r in ratios for m in methods if table[r].results[m].error]
    lines.append("")
    if any(failures.values()):
        lines.append("Failed fits (scored by the last observed loss instead): " +
                     ", ".join(f"{m} {n}" for m, n in failures.items() if n) + ".")
    lines += [f"Not run: {e}" for e in errors]
    if note:
        lines.append(note + ".")
    return "\n".join(lines).rstrip() + "\n"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.1f}"


def lodo_table(files, as_json: bool = False) -> str:
    """Leave-one-dataset-out: for each file, every method designed on the others and scored on it (held-out
    scores only), then the guard's setting designed on all the files (for the default, not scored here). JSON:
    ``{"design_all": {...}, "folds": {file: {"designed_on", "notes", "scores": {method: {ratio: {"pearcorr",
    "relacc"}}}}}}``."""
    from lmtune.selection.protocol import leave_one_out

    folds = leave_one_out(files)
    everything = design_report(files)  # the setting DESIGNED holds; the fits are memoised, so this is cheap
    if as_json:
        return json.dumps({"design_all": json.loads(design_report(files, True)), "folds": {fold.name: {
            "designed_on": fold.design, "notes": fold.notes,
            "scores": {m: {r: {"pearcorr": nan_to_none(res.pearcorr), "relacc": nan_to_none(res.relacc)}
                           for r, res in by_ratio.items()} for m, by_ratio in fold.results.items()}}
            for fold in folds}})
    ratios = sorted({r for f in files for r in f.ratios})
    methods = list(folds[0].results)
    lines = [f"Leave-one-dataset-out over {len(files)} files ({', '.join(f.name for f in files)}): each file is "
             "scored by methods designed on the other files only; held-out scores, x100. Target: each file's "
             "largest size; n/a: the ratio leaves fewer than two visible sizes.", ""]
    for fold in folds:
        lines += [f"**{fold.name} held out** (designed on {', '.join(fold.design)})", ""]
        lines += [f"- {m}: {note}" for m, note in fold.notes.items()]
        lines.append("")
        lines += ["| metric | method | " + " | ".join(f"1/{r}" for r in ratios) + " |",
                  "| --- " * (len(ratios) + 2) + "|"]
        for metric, label in (("pearcorr", "PearCorr"), ("relacc", "RelAcc")):
            for m in methods:
                cells = [_fmt(getattr(fold.results[m][r], metric)) if r in fold.results[m] else "n/a" for r in ratios]
                lines.append(f"| {label} | {m} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [everything, ""]
    lines += _lodo_summary(folds, methods)
    return "\n".join(lines).rstrip() + "\n"


def _lodo_summary(folds, methods) -> list[str]:
    """Where the proposed method is below AtS, held out (the goal is nowhere)."""
    if PROPOSED not in methods or "ats" not in methods:
        return []
    below = []
    for fold in folds:
        for ratio, result in fold.results[PROPOSED].items():
            ats = fold.results["ats"][ratio]
            for metric, label in (("pearcorr", "PearCorr"), ("relacc", "RelAcc")):
                mine, theirs = getattr(result, metric), getattr(ats, metric)
                if mine is not None and theirs is not None and mine < theirs - 1e-9:
                    below.append(f"{fold.name} 1/{ratio} {label} {mine:.1f} < {theirs:.1f}")
    if not below:
        return [f"{PROPOSED} is at or above AtS in PearCorr and RelAcc at every ratio of every held-out file."]
    return [f"{PROPOSED} below AtS, held out: " + "; ".join(below) + "."]


def design_report(files, as_json: bool = False) -> str:
    """The guard's setting chosen by the design rule on every file given (what ``DESIGNED`` holds)."""
    from lmtune.selection.protocol import design_guard

    setting, summary = design_guard(files)
    if as_json:
        return json.dumps({"setting": setting.name, **summary, "files": [f.name for f in files]})
    return (f"Design on {', '.join(f.name for f in files)}: `{setting.name}` ({summary['admissible']} of "
            f"{summary['settings']} settings never below AtS on {summary['cells']} cells; mean gain "
            f"{summary['mean_gain']:.2f} points PearCorr + RelAcc)\n")
