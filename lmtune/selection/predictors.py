"""Predictors that rank candidate models from what a budget lets them see.

Each one turns the visible part of every curve into a score per model (lower = predicted better after fine-tuning
on the target size) and reports which subset sizes it had to train, so its compute can be counted. ``feature``
is what the published protocol correlates with the true target losses: the predicted loss, except for
ModelSize, whose published PearCorr is the correlation of log(parameter count) itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lmtune.selection.ats import ats_predict, tail_median_predict
from lmtune.selection.curves import Curves
from lmtune.selection.guard import Setting, extrapolations, ntk_law
from lmtune.selection.laws import LAWS, FitError, Law, RectifiedLaw


@dataclass
class Prediction:
    """Scores (lower is better), the feature correlated with true losses, and the sizes trained per model."""

    method: str
    scores: np.ndarray
    feature: np.ndarray
    trained_sizes: list[int]
    failures: list[str] = field(default_factory=list)

    def ranking(self) -> np.ndarray:
        """Model indices, predicted best first (stable: ties keep file order)."""
        return np.argsort(self.scores, kind="stable")


class Predictor:
    name = "predictor"
    description = ""

    def predict(self, seen: Curves, target: int) -> Prediction:
        raise NotImplementedError


class ZeroShot(Predictor):
    name = "zeroshot"
    description = "loss before fine-tuning (D=0)"

    def predict(self, seen, target):
        zero = seen.zero_shot()
        if zero is None or np.isnan(zero).any():
            raise FitError("zeroshot needs a loss at size 0 for every model")
        return Prediction(self.name, zero.copy(), zero.copy(), [])


class SubTuning(Predictor):
    name = "subtuning"
    description = "loss after fine-tuning on the largest affordable subset"

    def predict(self, seen, target):
        last = _last_loss(seen)
        return Prediction(self.name, last, last.copy(), [int(seen.positive_sizes.max())])


class ModelSize(Predictor):
    name = "modelsize"
    description = "largest model first"

    def predict(self, seen, target):
        log_size = np.log(seen.params)
        return Prediction(self.name, -log_size, log_size, [])


class AtS(Predictor):
    name = "ats"
    description = "Accept-then-Stop: power law through the post-transition points (k=3, delta=5)"

    def __init__(self, k: int = 3, delta: float = 5.0):
        self.k, self.delta = k, delta

    def predict(self, seen, target):
        sizes = seen.sizes
        scores = np.array([ats_predict(sizes, row, target, self.k, self.delta) for row in seen.losses])
        return Prediction(self.name, scores, scores.copy(), _all_positive(seen))


class AtSMedian(Predictor):
    name = "ats-median"
    description = "median of three tail extrapolations of AtS's power phase (whole window, last 3, end-weighted)"

    def __init__(self, k: int = 3, delta: float = 5.0):
        self.k, self.delta = k, delta

    def predict(self, seen, target):
        scores = np.array([tail_median_predict(seen.sizes, row, target, self.k, self.delta) for row in seen.losses])
        return Prediction(self.name, scores, scores.copy(), _all_positive(seen))


class LawPredictor(Predictor):
    """Fit one law per model and predict at the target. A failed fit falls back to the model's last loss and is
    reported in ``failures`` (never hidden)."""

    def __init__(self, name: str, make_law, description: str = ""):
        self.name, self.make_law, self.description = name, make_law, description

    def predict(self, seen, target):
        last = _last_loss(seen)
        scores, failures = np.empty(len(seen.names)), []
        for i, row in enumerate(seen.losses):
            try:
                law: Law = self.make_law(i, seen)
                value = law.fit(seen.sizes, row).predict(target)
                if not np.isfinite(value):
                    raise FitError(f"{law.name}: non-finite prediction")
                scores[i] = value
            except FitError as error:
                scores[i] = last[i]
                failures.append(f"{seen.names[i]}: {error}")
        return Prediction(self.name, scores, scores.copy(), _all_positive(seen), failures)


class GuardedAtS(Predictor):
    """AtS clipped into the interval its alternative extrapolations span (``lmtune.selection.guard``).

    ``setting`` None is :data:`DESIGNED`: the setting the leave-one-dataset-out design rule chooses on every
    curves file lmtune has (docs/benchmarks.md says how it was chosen and on which files).
    """

    name = "ats-guard"
    description = "AtS, moved only where every alternative extrapolation (and its jackknife) agrees it is off"

    def __init__(self, setting: Setting | None = None, name: str | None = None):
        self.setting = DESIGNED if setting is None else setting
        self.name = name or self.name

    def predict(self, seen, target):
        extra = extrapolations(seen, target)
        scores = extra.predict(self.setting)
        return Prediction(self.name, scores, scores.copy(), _all_positive(seen))


def _last_loss(seen: Curves) -> np.ndarray:
    positive = seen.losses[:, seen.sizes > 0]
    out = np.empty(len(seen.names))
    for i, row in enumerate(positive):
        finite = np.flatnonzero(np.isfinite(row))
        if finite.size == 0:
            raise FitError(f"{seen.names[i]} has no loss at a positive size within the budget")
        out[i] = row[finite[-1]]
    return out


def _all_positive(seen: Curves) -> list[int]:
    return [int(s) for s in seen.positive_sizes]


#: The method lmtune proposes (the ``best`` key of ``lmtune bench select --json``) and the default of ``lmtune select``.
PROPOSED = "ats-guard"

#: The guard's setting chosen by the design rule on all of FLAN, WMT19 and benchmarks/data/curves/*.csv
#: (``benchmarks/select_lodo.sh``: the "Design on" line of benchmarks/results/select_lodo.md, docs/benchmarks.md):
#: AtS clipped into the span of the two end-weighted lines and their leave-one-point-out refits. The
#: leave-one-dataset-out table scores the same rule with each file left out in turn.
DESIGNED = Setting(("tail3", "kernel"), jackknife=True, weight=1.0)


def all_predictors() -> list[Predictor]:
    """Every method, in table order."""
    return [
        ZeroShot(), SubTuning(), ModelSize(), AtS(), AtSMedian(), GuardedAtS(),
        LawPredictor("power", lambda i, s: LAWS["power"](), "plain power law C*D^-alpha"),
        LawPredictor("vanilla", lambda i, s: LAWS["vanilla"](), "B*D^-beta + E"),
        LawPredictor("rectified", lambda i, s: RectifiedLaw("lin2024"),
                     "rectified law, the authors' two-stage fit (Lin et al. 2024)"),
        LawPredictor("lensllm", ntk_law, "B/(F + D^beta) + E; F from the model's NTK when known, else fitted "
                     "(then the rectified family, fitted by bounded multi-start least squares)"),
    ]
