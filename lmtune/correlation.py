"""Pearson and Spearman correlation of two lists of scores: the one way lmtune and its benchmarks compute them.

A proxy is trusted when its scores rank configs as their full runs do (Table 7 of "Efficient Hyper-parameter
Search for LoRA via Language-aided Bayesian Optimization"). A config that failed either run has no pair; with
fewer than three pairs, or one side constant, a correlation says nothing, so it is None rather than a number.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.stats


def finished_pairs(x: Sequence[float | None], y: Sequence[float | None], sign: float = 1.0) -> np.ndarray:
    """``(sign * x[i], y[i])`` for every ``i`` where both are known, in order."""
    return np.array([(sign * a, b) for a, b in zip(x, y, strict=True) if a is not None and b is not None])


def correlate(x: Sequence[float | None], y: Sequence[float | None], sign: float = 1.0) -> dict[str, float | None]:
    """``{"pearson", "spearman"}`` of ``sign * x`` with ``y`` over their finished pairs (None: too few or flat)."""
    pairs = finished_pairs(x, y, sign)
    if len(pairs) < 3 or np.ptp(pairs[:, 0]) == 0 or np.ptp(pairs[:, 1]) == 0:
        return {"pearson": None, "spearman": None}
    return {"pearson": float(np.corrcoef(pairs.T)[0, 1]),
            "spearman": float(scipy.stats.spearmanr(pairs[:, 0], pairs[:, 1]).statistic)}
