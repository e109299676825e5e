"""Run every predictor on a curves file under a data budget; score it when the true target losses are known.

``evaluate_methods`` is the pure step (curves in, a ``Selection`` out) that ``lmtune select`` (``choose_model``),
``lmtune bench select`` (``sweep``) and the leave-one-dataset-out protocol share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmtune.errors import InputError
from lmtune.selection.curves import Curves
from lmtune.selection.laws import FitError
from lmtune.selection.metrics import finetune_flops, pearcorr, relacc
from lmtune.selection.predictors import Prediction, Predictor, all_predictors

#: Mean tokens per example of the two benchmark datasets (METHODS.md section 2), used when a file is named so.
KNOWN_TOKENS_PER_SAMPLE = {"flan": 35.0, "wmt19": 72.0}
PAPER_RATIOS = (8, 16, 32, 64, 128, 256, 512)


@dataclass
class MethodResult:
    """One method at one budget: its prediction, and the metrics when the truth is known."""

    prediction: Prediction | None
    flops: float
    pearcorr: float | None = None
    relacc: float | None = None
    error: str | None = None


@dataclass
class Selection:
    """Every method's result at one budget, with the cost of fine-tuning all candidates on all data."""

    target: int
    budget: float
    results: dict[str, MethodResult]
    full_flops: float
    tokens_per_sample: float
    has_truth: bool
    notes: list[str] = field(default_factory=list)


def tokens_for(path: str | Path | None, tokens_per_sample: float | None) -> tuple[float, str | None]:
    """The tokens per example to count FLOPs with, and a note when it is a guess."""
    if tokens_per_sample is not None:
        if not tokens_per_sample > 0:
            raise InputError("tokens_per_sample", f"must be > 0, got {tokens_per_sample}")
        return float(tokens_per_sample), None
    stem = Path(path).stem.lower() if path is not None else ""
    if stem in KNOWN_TOKENS_PER_SAMPLE:
        return KNOWN_TOKENS_PER_SAMPLE[stem], None
    return 1.0, "FLOPs counted per token (tokens per example unknown; pass `tokens_per_sample`)"


def check_budget(curves: Curves, target: int, ratio: float) -> float:
    """The largest training size a method may see; it must leave two positive sizes and lie below the target."""
    if not target > 0:
        raise InputError("target_size", f"must be > 0, got {target}")
    if not ratio >= 1:
        raise InputError("budget_ratio", f"must be >= 1 (methods see sizes <= target / ratio), got {ratio}")
    budget = target / ratio
    visible = curves.positive_sizes[curves.positive_sizes <= budget]
    if len(visible) < 2:
        raise InputError("budget_ratio", f"target {target} / ratio {ratio:g} = {budget:g} leaves "
                                         f"{len(visible)} positive training size(s) (sizes: "
                                         f"{', '.join(map(str, curves.positive_sizes))}); two or more are needed")
    return budget


def evaluate_methods(curves: Curves, target: int, ratio: float, *, tokens_per_sample: float = 1.0,
                  epochs: float = 1.0, predictors: list[Predictor] | None = None) -> Selection:
    """Every predictor sees sizes <= target/ratio (plus D=0); metrics need the true losses at ``target``."""
    budget = check_budget(curves, target, ratio)
    seen = curves.up_to(budget)
    truth = curves.loss_at(target) if target > budget else None
    results: dict[str, MethodResult] = {}
    for predictor in predictors or all_predictors():
        try:
            prediction = predictor.predict(seen, target)
        except FitError as error:
            results[predictor.name] = MethodResult(None, 0.0, error=str(error))
            continue
        flops = finetune_flops(curves.params, prediction.trained_sizes, tokens_per_sample, epochs)
        result = MethodResult(prediction, flops)
        if truth is not None:
            result.pearcorr = pearcorr(prediction.feature, truth)
            result.relacc = relacc(int(prediction.ranking()[0]), truth)
        results[predictor.name] = result
    full = finetune_flops(curves.params, [target], tokens_per_sample, epochs)
    return Selection(target, budget, results, full, tokens_per_sample, truth is not None)


def sweep(curves: Curves, target: int, ratios=PAPER_RATIOS, **kwargs) -> dict[int, Selection]:
    """``evaluate_methods`` at every budget ratio."""
    return {int(r): evaluate_methods(curves, target, r, **kwargs) for r in ratios}


def nan_to_none(value: float | None) -> float | None:
    return None if value is None or np.isnan(value) else value
