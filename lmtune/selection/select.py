"""``lmtune select``: rank candidate models with every method and say how good each ranking is.

The curves come from a file, or are measured here by fine-tuning each candidate on nested subsets.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmtune.config import build_config, check_writable_folder
from lmtune.errors import InputError
from lmtune.extras import require
from lmtune.results import Result
from lmtune.selection.config import SelectConfig
from lmtune.selection.curves import Curves
from lmtune.selection.evaluate import Selection, evaluate_methods, tokens_for
from lmtune.selection.predictors import PROPOSED

log = logging.getLogger(__name__)


@dataclass
class SelectResult(Result):
    """The ranking by the proposed method, every method's result, and where the curves and the plot are."""

    ranking: list[str]
    selection: Selection
    curves: Curves
    curves_path: Path
    plot_path: Path
    text: str


def choose_model(config: SelectConfig | None = None, **fields: Any) -> SelectResult:
    """Rank from ``config.curves``, or from curves measured for ``config.models`` (resumable CSV at ``out``)."""
    from lmtune.selection.curves import load_curves

    cfg = config or build_config(SelectConfig, **fields)
    require("select", "select")  # the PNG is part of every answer
    plot_target(cfg.plot, cfg.curves or cfg.out, cfg.out.parent)  # an unwritable `plot` fails now, not later
    if cfg.models:  # the measured curves go to `out`
        check_writable_folder(cfg.out.parent, "out")
    if (cfg.curves is None) == (not cfg.models):
        raise InputError("curves", "give either `curves` FILE or `models` A B C (with `dataset` and `sizes`)")
    if cfg.curves is not None:
        if cfg.dataset or cfg.sizes:
            raise InputError("dataset", "`dataset` and `sizes` go with `models`, not `curves`")
        table = load_curves(cfg.curves)
        target = int(cfg.target_size or table.sizes.max())
        ratio = 8.0 if cfg.budget_ratio is None else cfg.budget_ratio
        tokens, note = tokens_for(cfg.curves, cfg.tokens_per_sample)
        source = Path(cfg.curves)
    else:
        table, target, ratio, tokens, note = _measure(cfg)
        source = cfg.out
    plot_path = plot_target(cfg.plot, source, cfg.out.parent)
    selection = evaluate_methods(table, target, ratio, tokens_per_sample=tokens)
    _plot(selection, table, plot_path)
    text = format_selection(selection, table)
    if note:
        text += f"\n{note}.\n"
    ranking = [table.names[i] for i in selection.results[PROPOSED].prediction.ranking()]
    return SelectResult(ranking, selection, table, source, plot_path, text + f"plot: {plot_path}\n")


def plot_target(plot: Path | None, source: Path, output: Path) -> Path:
    """Where the PNG goes: ``plot`` (a folder gets ``<curves>-select.png`` inside), by default ``output`` (the
    folder of ``out``), never the data folder a curves file was read from. A folder lmtune cannot write to is an
    ``InputError`` naming ``plot``."""
    name = Path(source).stem + "-select.png"
    path = Path(output) / name if plot is None else (
        Path(plot) / name if Path(plot).is_dir() or str(plot).endswith(("/", os.sep)) else Path(plot))
    check_writable_folder(path.parent if path.parent != Path("") else Path("."), "plot")
    if path.is_dir():
        raise InputError("plot", f"cannot write {path}: it is a folder")
    return path


def _measure(cfg: SelectConfig):
    from lmtune.finetune.data import load_dataset
    from lmtune.finetune.hparams import LoraHyperparams
    from lmtune.finetune.train import TrainSettings
    from lmtune.selection.measure import measure_curves

    if cfg.sizes is None:
        raise InputError("sizes", "`models` needs `sizes`, e.g. 0,50,100,200,400")
    splits = load_dataset(cfg.dataset, seed=cfg.seed)
    hp = LoraHyperparams(learning_rate=cfg.learning_rate or (2e-4 if cfg.mode == "lora" else 5e-5),
                         batch_size=cfg.batch_size)
    settings = TrainSettings(max_length=cfg.max_length, epochs=cfg.epochs)
    table, meta = measure_curves(cfg.models, splits, cfg.sizes, cfg.out, mode=cfg.mode, hp=hp, settings=settings,
                                 seed=cfg.seed, ntk_examples=cfg.ntk_examples, progress=log.info)
    target = int(cfg.target_size or len(splits.train))
    # default: every measured size is visible, i.e. the budget is the largest measured size
    ratio = cfg.budget_ratio if cfg.budget_ratio is not None else target / max(float(table.sizes.max()), 1.0)
    if cfg.budget_ratio is None and target <= table.sizes.max():
        ratio = 1.0
    tokens = cfg.tokens_per_sample or meta.get("tokens_per_sample") or 1.0
    note = None if (cfg.tokens_per_sample or meta.get("tokens_per_sample")) else "FLOPs counted per token"
    return table, target, ratio, tokens, note


def _plot(selection: Selection, curves: Curves, path: Path) -> None:
    """The PNG of what the selection saw and the proposed method's ranking."""
    from lmtune.selection.plot import plot_curves

    proposed = selection.results[PROPOSED].prediction
    plot_curves(curves, selection.target, selection.budget, path, method=PROPOSED,
                ranking=None if proposed is None else proposed.ranking(),
                scores=None if proposed is None else proposed.scores)


def format_selection(selection: Selection, curves: Curves, top: int | None = None) -> str:
    """The proposed ranking, then each method's pick with PearCorr, RelAcc and compute (when the truth is known)."""
    truth = curves.loss_at(selection.target) if selection.has_truth else None
    lines = [f"{len(curves.names)} models; target size {selection.target:,}; methods see sizes <= "
             f"{selection.budget:,.0f} (and D=0)", ""]
    proposed = selection.results[PROPOSED].prediction
    lines.append(f"Ranking by {PROPOSED} (predicted loss at the target" + (", true loss)" if truth is not None
                                                                           else ")"))
    order = proposed.ranking()[: top or len(curves.names)]
    width = max(len(curves.names[i]) for i in order)
    for place, i in enumerate(order, start=1):
        true = f"  true {truth[i]:.4f}" if truth is not None else ""
        lines.append(f"{place:3d}. {curves.names[i]:<{width}}  {proposed.scores[i]:.4f}{true}")
    lines += ["", "| method | pick | PearCorr | RelAcc | FLOPs | saved vs all-data |", "| --- " * 6 + "|"]
    for method, result in selection.results.items():
        if result.prediction is None:
            lines.append(f"| {method} | not run: {result.error} | | | | |")
            continue
        pick = curves.names[int(result.prediction.ranking()[0])]
        pc = "n/a" if result.pearcorr is None or np.isnan(result.pearcorr) else f"{result.pearcorr:.1f}"
        ra = "n/a" if result.relacc is None else f"{result.relacc:.1f}"
        saved = 100 * (1 - result.flops / selection.full_flops)
        failed = f" ({len(result.prediction.failures)} fits failed)" if result.prediction.failures else ""
        lines.append(f"| {method}{failed} | {pick} | {pc} | {ra} | {result.flops:.3g} | {saved:.1f}% |")
    if truth is None:
        lines += ["", f"(no true losses at size {selection.target:,} in the file: PearCorr and RelAcc not computed)"]
    lines += ["", "PearCorr: Pearson correlation (x100) of a method's predicted losses with the true losses at the "
              "target, over the models. RelAcc: where the method's pick ranks against the truth, as (worst - pick) / "
              "(worst - best) x100 on the true losses (100: it picked the best model). FLOPs: what the method trained "
              "(6 x parameters x tokens over every subset it fitted). saved vs all-data: the share of FLOPs saved "
              "against fine-tuning every model once on the target size."]
    return "\n".join(lines) + "\n"
