"""The guard: a learner's per-input choice is used only where it is predicted to beat the global config by a
margin; every other input gets the global config.

The learners (``head``, ``neighbours``) predict each candidate config's *margin* over the global config on an
input; the global config is a candidate with margin 0 by definition. The choice is the candidate with the largest
predicted margin, its *predicted gain*. The largest of many noisy predictions is biased upward (the winner's
curse), so a gain above 0 is not yet evidence; the margin says how large it must be.

The margin is calibrated on inputs the learner never trained on: the validation inputs (the choice and the global
config measured on the label search's own seeded requests) and the training inputs' out-of-fold predictions (5
folds; the choice's and the global config's scores there are what the label search and the training measured).
For each threshold m (0, and every predicted gain above 0), the guarded gain is the mean over these inputs of the
measured margin where the predicted gain exceeds m, and 0 elsewhere. The margin is the threshold with the largest
guarded gain, the largest such threshold when several tie; when no threshold gains anything, the guard always
answers with the global config. Test inputs take no part.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass

from lmtune.hag.search import simplicity
from lmtune.hag.space import Decoding

FOLDS = 5


@dataclass(frozen=True)
class Guard:
    """The calibrated margin (None: always the global config) and what it gave on the calibration inputs."""

    margin: float | None
    inputs: int
    gain: float
    share: float
    unguarded_gain: float
    unguarded_share: float

    def to_dict(self) -> dict:
        return asdict(self)

    def allows(self, gain: float) -> bool:
        return self.margin is not None and gain > self.margin


def candidates_and_margins(rows: list[dict], reference: list[float]) -> tuple[list[Decoding], list[list[float]]]:
    """The candidates, configs the label search measured on every training input (its coarse sweep), least random
    first, and each input's measured margin of each over the reference (global) config's measured score."""
    measured = [{Decoding.from_dict(c): sum(v) / len(v) for c, v in row.get("scores") or [] if v} for row in rows]
    shared = set.intersection(*(set(m) for m in measured))
    candidates = sorted(shared, key=simplicity)
    return candidates, [[m[c] - ref for c in candidates] for m, ref in zip(measured, reference, strict=True)]


def best(predictions) -> tuple[list[int], list[float]]:
    """Each row's candidate with the largest predicted margin, and that margin (the predicted gain)."""
    values, picks = predictions.max(1)
    return picks.tolist(), values.tolist()


def out_of_fold(fit: Callable, features, margins, seed: int) -> tuple[list[float], list[float]]:
    """Each training input's predicted gain by a predictor fitted without it (``fit(features, margins)``), and the
    margin its choice measured there."""
    order = list(range(len(features)))
    random.Random(f"guard:{seed}").shuffle(order)
    gains, realized = [0.0] * len(order), [0.0] * len(order)
    for fold in range(min(FOLDS, len(order))):
        held = order[fold::FOLDS]
        kept = sorted(set(order) - set(held))
        if not kept:
            continue
        picks, predicted = best(fit(features[kept], margins[kept])(features[held]))
        for i, k, gain in zip(held, picks, predicted, strict=True):
            gains[i], realized[i] = gain, float(margins[i, k])
    return gains, realized


def calibrate(gains: list[float], realized: list[float]) -> Guard:
    """The margin with the largest guarded gain on these inputs (see the module docstring)."""
    n = len(gains)

    def guarded(threshold: float) -> tuple[float, float]:
        used = [r for g, r in zip(gains, realized, strict=True) if g > threshold]
        return sum(used) / n, len(used) / n

    margin, top = None, 0.0
    for threshold in [0.0] + sorted({g for g in gains if g > 0}):
        value = guarded(threshold)[0]
        if value > 0 and (margin is None or value >= top):
            margin, top = threshold, value
    share = guarded(margin)[1] if margin is not None else 0.0
    return Guard(margin, n, top, share, *guarded(0.0))
