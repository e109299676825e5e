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

    order = [int(i) for i in ranking] if ranking is not None else list(range(len(curves.names)))
    picked = set(order[:chosen]) if ranking is not None else set()
    n = len(order)
    cols = min(5, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(3.3 * cols, 7.0), 2.7 * rows + 1.0), squeeze=False)
    setting = DESIGNED if setting is None else setting
    panel = _Panel(curves, target, budget, setting)
    for place, i in enumerate(order):
        rank = f"#{place + 1} " if ranking is not None else ""
        predicted = f"\npredicted {scores[i]:.3g} at target" if scores is not None and np.isfinite(scores[i]) else ""
        panel.draw(axes[place // cols][place % cols], i, f"{rank}{_short(curves.names[i])}{predicted}", i in picked)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    order_note = f", ordered by {method}'s predicted loss at the target" if ranking is not None else ""
    _frame(fig, _legend(budget, target, setting, method if picked else None),
           f"Fine-tuning loss vs training examples, {n} models{order_note}")
    return fig


class _Panel:
    """Draws one model's panel: what every panel shares (the seen points, the guard's interval and prediction at
    the target, the grids the lines are drawn on) is computed once."""

    def __init__(self, curves: Curves, target: int, budget: float, setting: Setting):
        self.curves, self.target, self.budget = curves, target, budget
        self.seen = curves.up_to(budget)
        extra = extrapolations(self.seen, target)
        self.low, self.high = extra.interval(setting)
        self.proposed = np.exp(guarded(extra.ats, self.low, self.high, setting.weight))
        self.grid = np.geomspace(curves.positive_sizes.min(), max(target, curves.sizes.max()), 200)
        # AtS's line from a little before the budget, so it is visible next to the points
        self.span = np.geomspace(max(curves.positive_sizes.min(), budget / 16), target, 40)

    def draw(self, ax, i: int, title: str, picked: bool) -> None:
        curves, seen, budget, target = self.curves, self.seen, self.budget, self.target
        positive = curves.sizes > 0
        visible = positive & (curves.sizes <= budget)
        ax.scatter(curves.sizes[visible], curves.losses[i, visible], s=14, color=SEEN)
        hidden = positive & (curves.sizes > budget)
        ax.scatter(curves.sizes[hidden], curves.losses[i, hidden], s=14, facecolors="none", edgecolors=SEEN)
        ntk = seen.ntk_f[i] if seen.ntk_f is not None and np.isfinite(seen.ntk_f[i]) else None
        try:
            law = NTKLaw(ntk).fit(seen.sizes, seen.losses[i])
            ax.plot(self.grid, law.predict(self.grid), color=FIT, lw=1)
        except FitError:
            pass
        ax.plot(self.span, np.exp(ats_line(seen.sizes, seen.losses[i])(np.log(self.span))), color=ATS, lw=1, ls="--")
        if np.isfinite(self.low[i]):
            ax.plot([target, target], np.exp([self.low[i], self.high[i]]), color=GUARD, lw=3, alpha=0.4)
        ax.scatter([target], [self.proposed[i]], marker="x", color=GUARD, s=20)
        ax.axvline(budget, color="grey", lw=0.8)
        ax.axvline(target, color="black", lw=0.8, ls=":")
        _style(ax, title, picked)


#: How each alternative extrapolation of ``lmtune.selection.guard`` reads in the legend.
ALTERNATIVE_WORDS = {"tail3": "last-3-points line", "kernel": "kernel-weighted line", "rectified": "rectified law",
                     "lensllm": "LENSLLM law"}
#: Log-axis tick values within one decade, coarse to fine; a short axis takes the first that gives it three labels.
NICE_TICKS = ((1.0, 2.0, 5.0), (1.0, 1.5, 2.0, 3.0, 5.0, 7.0), (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0),
              tuple(k / 10 for k in range(10, 100)))


def setting_words(setting: Setting) -> str:
    """A guard setting in words (``tail3+kernel+jackknife@1`` is a key, not a legend)."""
    if not setting.alternatives or setting.weight == 0:
        return "AtS itself"
    names = " and ".join(ALTERNATIVE_WORDS.get(a, a) for a in setting.alternatives)
    how = "moved halfway" if setting.weight == 0.5 else f"moved {setting.weight:g} of the way"
    return (f"AtS clipped into the range of the {names}" + (" (jackknifed)" if setting.jackknife else "")
            + ("" if setting.weight == 1 else f", {how}"))


def log_ticks(low: float, high: float, most: int = 6) -> list[float]:
    """Round values between ``low`` and ``high`` (> 0), three or more where the axis allows, at least 1/most of the
    log range apart, so labels on a short log axis never overlap (matplotlib labels every minor tick of a range under
    a decade, and they collide)."""
    span = math.log10(high / low)
    decades = range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
    ticks: list[float] = []
    for level in NICE_TICKS:
        candidates = sorted(v * 10.0**k for k in decades for v in level if low <= v * 10.0**k <= high)
        ticks = []
        for value in candidates:
            if not ticks or math.log10(value / ticks[-1]) >= span / most:
                ticks.append(value)
        if len(ticks) >= 3:
            break
    return ticks


def _style(ax, title: str, picked: bool) -> None:
    """Log axes with plain, spaced tick labels, the title, and a red frame around a chosen model."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda value, _: f"{value:.3g}")  # 1.8, not 1.8 x 10^0, on a log axis
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=7, color=CHOSEN if picked else "black", fontweight="bold" if picked else "normal")
    if picked:
        for spine in ax.spines.values():
            spine.set_edgecolor(CHOSEN)
            spine.set_linewidth(2.2)
    low, high = ax.get_ylim()
    ax.yaxis.set_major_locator(FixedLocator(log_ticks(low, high)))
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(low, high)
    ax.tick_params(labelsize=6)


def _legend(budget: float, target: int, setting: Setting, chosen_by: str | None) -> list:
    """One legend entry per kind of mark; the chosen model's frame only when a model was chosen."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=SEEN, marker="o", ls="", markersize=4, label=f"seen (size <= budget {budget:,.0f})"),
        Line2D([], [], color=SEEN, marker="o", ls="", markersize=4, markerfacecolor="none", label="held out"),
        Line2D([], [], color=FIT, lw=1, label="LENSLLM/rectified fit"),
        Line2D([], [], color=ATS, lw=1, ls="--", label="AtS line"),
        Line2D([], [], color=GUARD, marker="x", ls="", markersize=5,
               label=f"guarded prediction: {setting_words(setting)}"),
        Line2D([], [], color="grey", lw=0.8, label=f"budget: {budget:,.0f} examples"),
        Line2D([], [], color="black", lw=0.8, ls=":", label=f"target: {target:,} examples"),
    ]
    if chosen_by is not None:
        handles.append(Line2D([], [], color=CHOSEN, lw=2.2, label=f"chosen by {chosen_by}"))
    return handles


def _frame(fig, handles: list, title: str) -> None:
    """The title, one legend for every panel above them, the axis labels, and a layout that leaves them room."""
    width, height = fig.get_size_inches()
    fig.suptitle(title, fontsize=10, y=1 - 0.1 / height, va="top")
    columns = min(len(handles), max(2, int(width / 2.4)))
    fig.legend(handles=handles, loc="upper center", ncol=columns, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 1 - 0.35 / height))
    fig.supxlabel("training examples (log scale)", fontsize=8)
    fig.supylabel("loss (log scale)", fontsize=8)
    legend_rows = math.ceil(len(handles) / columns)
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.45 + 0.22 * legend_rows) / height))


def _short(name: str, width: int = 34) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]
