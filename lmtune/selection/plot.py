"""PNG of every model's measured points and fitted curves: what a selection saw and what it extrapolated."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lmtune.selection.ats import ats_line
from lmtune.selection.curves import Curves
from lmtune.selection.guard import Setting, extrapolations, guarded
from lmtune.selection.laws import FitError, NTKLaw
from lmtune.selection.predictors import DESIGNED


def plot_curves(curves: Curves, target: int, budget: float, path: str | Path, setting: Setting | None = None) -> Path:
    """One panel per model: points seen under the budget (filled), held-out points (hollow), the rectified-family
    fit (LENSLLM form; solid), AtS's line (dashed) up to the target, and there the guarded prediction of
    ``setting`` (default: the proposed method's) with the interval its alternatives span."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(curves.names)
    cols = min(5, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    seen = curves.up_to(budget)
    setting = DESIGNED if setting is None else setting
    extra = extrapolations(seen, target)
    low, high = extra.interval(setting)
    proposed = np.exp(guarded(extra.ats, low, high, setting.weight))
    positive = curves.sizes > 0
    grid = np.geomspace(curves.positive_sizes.min(), max(target, curves.sizes.max()), 200)
    for i, name in enumerate(curves.names):
        ax = axes[i // cols][i % cols]
        visible = positive & (curves.sizes <= budget)
        ax.scatter(curves.sizes[visible], curves.losses[i, visible], s=14, color="C0", label="seen")
        hidden = positive & (curves.sizes > budget)
        ax.scatter(curves.sizes[hidden], curves.losses[i, hidden], s=14, facecolors="none", edgecolors="C0",
                   label="held out")
        ntk = seen.ntk_f[i] if seen.ntk_f is not None and np.isfinite(seen.ntk_f[i]) else None
        try:
            law = NTKLaw(ntk).fit(seen.sizes, seen.losses[i])
            ax.plot(grid, law.predict(grid), color="C1", lw=1, label="LENSLLM/rectified fit")
        except FitError:
            pass
        span = np.geomspace(max(curves.positive_sizes.min(), budget / 16), target, 40)  # visible next to the points
        ax.plot(span, np.exp(ats_line(seen.sizes, seen.losses[i])(np.log(span))), color="C2", lw=1, ls="--",
                label="AtS")
        if np.isfinite(low[i]):
            ax.plot([target, target], np.exp([low[i], high[i]]), color="C3", lw=3, alpha=0.4)
        ax.scatter([target], [proposed[i]], marker="x", color="C3", s=20, label=f"guard ({setting.name})")
        ax.axvline(budget, color="grey", lw=0.5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(name[-32:], fontsize=7)
        ax.tick_params(labelsize=6)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].legend(fontsize=5)
    fig.suptitle(f"fine-tuning loss vs training size (budget {budget:,.0f}, target {target:,})", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
