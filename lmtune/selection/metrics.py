"""How well a ranking picks the model that is best after full fine-tuning, and what it cost (the protocol of
"Selecting Large Language Model to Fine-tune via Rectified Scaling Law", arXiv:2402.02314)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import pearsonr


def pearcorr(feature: np.ndarray, true_losses: np.ndarray) -> float:
    """Pearson correlation x100 between a method's feature (its predicted loss) and the true target losses."""
    if np.ptp(feature) == 0 or np.ptp(true_losses) == 0:
        return float("nan")
    return float(pearsonr(feature, true_losses)[0] * 100)


def relacc(selected: int, true_losses: np.ndarray) -> float:
    """(L_worst - L_selected) / (L_worst - L_best) x100 on the true target losses."""
    worst, best = np.max(true_losses), np.min(true_losses)
    if worst == best:
        return 100.0
    return float((worst - true_losses[selected]) / (worst - best) * 100)


def finetune_flops(params: np.ndarray, sizes: Sequence[int], tokens_per_sample: float, epochs: float = 1.0) -> float:
    """FLOPs = 6 * parameters * tokens, summed over models and over every subset size trained."""
    return float(6.0 * np.sum(params) * tokens_per_sample * epochs * float(sum(sizes)))
