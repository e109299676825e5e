"""``lmtune bench select``: the paper-style table for budget ratios 8..512.

The layout of Table 1 of "Selecting Large Language Model to Fine-tune via Rectified Scaling Law" (arXiv:2402.02314).
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

    The target is the largest size in the file unless given; every model needs its true loss there. JSON:
    ``{method: {ratio: {"pearcorr", "relacc", "flops"}}}`` (scores x100, ratios as integer keys) plus the
    proposed method again under ``"best"``.
    """
    cfg = config or build_config(BenchSelectConfig, **fields)
    curves_path, ratios, as_json = cfg.curves, cfg.ratios, cfg.as_json
    target_size, tokens_per_sample = cfg.target_size, cfg.tokens_per_sample
    curves = load_curves(curves_path)
    target = int(target_size or curves.sizes.max())
    if curves.loss_at(target) is None:
        raise InputError("target_size", f"{curves_path} has no loss for every model at size {target}; "
                                        "the benchmark needs the true target losses")
    ratios = [int(r) for r in ratios]
    if not ratios or any(r < 2 for r in ratios):
        raise InputError("ratios", f"budget ratios must be integers >= 2, got {ratios}")
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
