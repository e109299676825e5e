"""``lmtune select``: rank the candidates of a curves file with every method and say how good each ranking is."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmtune.selection.curves import Curves
from lmtune.selection.evaluate import Selection, run_selection
from lmtune.selection.predictors import PROPOSED


def select_models(curves: Curves, target: int, ratio: float, *, tokens_per_sample: float = 1.0,
                  plot_path: str | Path | None = None) -> Selection:
    """Run every method under the budget target/ratio; write the PNG when ``plot_path`` is given."""
    selection = run_selection(curves, target, ratio, tokens_per_sample=tokens_per_sample)
    if plot_path is not None:
        from lmtune.selection.plot import plot_curves

        plot_curves(curves, target, selection.budget, plot_path)
    return selection


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
    return "\n".join(lines) + "\n"
