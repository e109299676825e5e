"""PNG of every model's measured points and fitted curves: what a selection saw and what it extrapolated."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lmtune.files import write_atomic
from lmtune.selection.ats import ats_line
from lmtune.selection.curves import Curves
from lmtune.selection.guard import Setting, extrapolations, guarded
from lmtune.selection.laws import FitError, NTKLaw
from lmtune.selection.predictors import DESIGNED, PROPOSED

#: Colours: seen and held-out points, the rectified-family fit, AtS's line, the guarded prediction, the chosen model.
SEEN, FIT, ATS, GUARD, CHOSEN = "C0", "C1", "C2", "C4", "#d62728"


def plot_curves(curves: Curves, target: int, budget: float, path: str | Path, **options) -> Path:
    """Write ``curves_figure`` as a PNG to ``path`` (atomically); returns the path."""
    fig = curves_figure(curves, target, budget, **options)  # (selects the Agg backend before pyplot loads)
    import matplotlib.pyplot as plt

    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    return write_atomic(Path(path), png.getvalue())


def curves_figure(curves: Curves, target: int, budget: float, *, ranking: Sequence[int] | None = None,
                  scores: Sequence[float] | None = None, chosen: int = 1, method: str = PROPOSED,
                  setting: Setting | None = None):
    """One panel per model, in ``ranking`` order (predicted best first; file order without one): points seen under
    the budget (filled), held-out points (hollow), the rectified-family fit (LENSLLM form; solid), AtS's line
    (dashed) up to the target, and there the guarded prediction of ``setting`` (default: the proposed method's) with
    the interval its alternatives span. The first ``chosen`` models of the ranking are marked; the budget and the
    target are labelled lines; one legend serves every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:.3g}")  # 1.8, not 1.8 x 10^0, on a log axis
    order = [int(i) for i in ranking] if ranking is not None else list(range(len(curves.names)))
    picked = set(order[:chosen]) if ranking is not None else set()
    n = len(order)
    cols = min(5, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(3.3 * cols, 7.0), 2.7 * rows + 1.0), squeeze=False)
    seen = curves.up_to(budget)
    setting = DESIGNED if setting is None else setting
    extra = extrapolations(seen, target)
    low, high = extra.interval(setting)
    proposed = np.exp(guarded(extra.ats, low, high, setting.weight))
    positive = curves.sizes > 0
    grid = np.geomspace(curves.positive_sizes.min(), max(target, curves.sizes.max()), 200)
    for place, i in enumerate(order):
        ax = axes[place // cols][place % cols]
        visible = positive & (curves.sizes <= budget)
        ax.scatter(curves.sizes[visible], curves.losses[i, visible], s=14, color=SEEN)
        hidden = positive & (curves.sizes > budget)
        ax.scatter(curves.sizes[hidden], curves.losses[i, hidden], s=14, facecolors="none", edgecolors=SEEN)
        ntk = seen.ntk_f[i] if seen.ntk_f is not None and np.isfinite(seen.ntk_f[i]) else None
        try:
            law = NTKLaw(ntk).fit(seen.sizes, seen.losses[i])
            ax.plot(grid, law.predict(grid), color=FIT, lw=1)
        except FitError:
            pass
        span = np.geomspace(max(curves.positive_sizes.min(), budget / 16), target, 40)  # visible next to the points
        ax.plot(span, np.exp(ats_line(seen.sizes, seen.losses[i])(np.log(span))), color=ATS, lw=1, ls="--")
        if np.isfinite(low[i]):
            ax.plot([target, target], np.exp([low[i], high[i]]), color=GUARD, lw=3, alpha=0.4)
        ax.scatter([target], [proposed[i]], marker="x", color=GUARD, s=20)
        ax.axvline(budget, color="grey", lw=0.8)
        ax.axvline(target, color="black", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        rank = f"#{place + 1} " if ranking is not None else ""
        predicted = f"\npredicted {scores[i]:.3g} at target" if scores is not None and np.isfinite(scores[i]) else ""
        ax.set_title(f"{rank}{_short(curves.names[i])}{predicted}", fontsize=7,
                     color=CHOSEN if i in picked else "black", fontweight="bold" if i in picked else "normal")
        if i in picked:
            for spine in ax.spines.values():
                spine.set_edgecolor(CHOSEN)
                spine.set_linewidth(2.2)
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(labelsize=6)
        ax.tick_params(which="minor", labelsize=5)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    handles = [
        Line2D([], [], color=SEEN, marker="o", ls="", markersize=4, label=f"seen (size <= budget {budget:,.0f})"),
        Line2D([], [], color=SEEN, marker="o", ls="", markersize=4, markerfacecolor="none", label="held out"),
        Line2D([], [], color=FIT, lw=1, label="LENSLLM/rectified fit"),
        Line2D([], [], color=ATS, lw=1, ls="--", label="AtS line"),
        Line2D([], [], color=GUARD, marker="x", ls="", markersize=5, label=f"guarded prediction ({setting.name})"),
        Line2D([], [], color="grey", lw=0.8, label=f"budget: {budget:,.0f} examples"),
        Line2D([], [], color="black", lw=0.8, ls=":", label=f"target: {target:,} examples"),
    ]
    if picked:
        handles.append(Line2D([], [], color=CHOSEN, lw=2.2, label=f"chosen by {method}"))
    order_note = f", ordered by {method}'s predicted loss at the target" if ranking is not None else ""
    width, height = fig.get_size_inches()
    fig.suptitle(f"Fine-tuning loss vs training examples, {n} models{order_note}", fontsize=10,
                 y=1 - 0.1 / height, va="top")
    columns = min(len(handles), max(2, int(width / 2.4)))
    fig.legend(handles=handles, loc="upper center", ncol=columns, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 1 - 0.35 / height))
    fig.supxlabel("training examples (log scale)", fontsize=8)
    fig.supylabel("loss (log scale)", fontsize=8)
    legend_rows = math.ceil(len(handles) / columns)
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.45 + 0.22 * legend_rows) / height))
    return fig


def _short(name: str, width: int = 34) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]
