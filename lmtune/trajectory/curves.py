"""One trial's learning curve in a few numbers and flags: the per-trial half of the Trajectory Context Summarizer.

"Small LLMs with Expert Blocks Are Good Enough for Hyperparameter Tuning" (arXiv:2509.15561) turns raw training
trajectories into a structured report so that a small model reads conclusions instead of columns of losses.
This module draws those conclusions deterministically from what an lmtune trial stores: ``trajectory`` (the
evaluation records ``{step, epoch, train_loss, eval_loss, <metric>}``) and ``step_losses`` (the training loss
of every optimizer step). Every threshold is a named constant with the reason for its value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

#: A run whose training loss ends this many times above where it started has blown up. lmtune's own trainer
#: stops a run at 4x (``TrainSettings.divergence_factor``); 1.5x marks the runs that were heading there.
DIVERGED_RATIO = 1.5
#: Validation loss this far (relative) above its lowest point, while training loss fell, is overfitting:
#: 5% is beyond the evaluation noise of a few hundred validation examples at the losses lmtune sees.
OVERFIT_RISE = 0.05
#: A training loss that fell by less than this fraction over the whole run did not learn (underfitting).
UNDERFIT_DROP = 0.05
#: Between the last two evaluations, a relative change of the validation loss smaller than this is a plateau ...
#: (with one evaluation: the training loss over the last half of the steps, fitted by a line, since single
#: steps of batches of 4-32 examples are too noisy to compare)
PLATEAU_DROP = 0.02
#: ... and a fall of at least this is "still improving": the run was stopped while it still learned.
IMPROVING_DROP = 0.05
#: A step whose loss is this many times the median of the steps before it and of those after it is a spike (a
#: loss that rises and stays up is divergence, not a spike). Batch-to-batch noise
#: of small batches (4-32 examples) stays within about 1.3x of the running median on lmtune's tables.
SPIKE_RATIO = 1.5
#: Steps in the running median a spike is measured against.
SPIKE_WINDOW = 5
#: Spikes that make a curve "spiky" (one can be a hard batch).
SPIKES_SPIKY = 2
#: The gap between validation and training loss "widens" or "narrows" when it moves by this much (relative
#: to the validation loss); less is "steady".
GAP_TREND = 0.02

FLAGS = ("diverged", "overfitting", "underfitting", "plateau", "still improving", "spiky")


@dataclass
class CurveSummary:
    """What one trial's curves say. Values are rounded (``DIGITS`` significant digits) so reports are stable."""

    points: int = 0
    steps: int = 0
    best_step: int | None = None
    best_value: float | None = None
    final_value: float | None = None
    gap: float | None = None  # final validation loss minus final training loss
    gap_trend: str | None = None  # widening, narrowing, steady
    recent_drop: float | None = None  # relative fall of the validation loss between the last two evaluations
    total_drop: float | None = None  # relative fall of the training loss, first quarter of the steps to last
    volatility: float | None = None  # mean absolute step-to-step change, relative to the mean loss
    spikes: int = 0
    flags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, [])}


DIGITS = 4


def rounded(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(f"{value:.{DIGITS}g}")


def summarize_curve(trajectory: Sequence[dict[str, Any]] | None, step_losses: Sequence[float] | None,
                    metric: str, maximize: bool, *, failed_reason: str | None = None) -> CurveSummary:
    """The summary of one trial's records (either may be empty); ``metric`` is the key scored in the records."""
    records = [r for r in (trajectory or []) if isinstance(r, dict)]
    losses = [float(x) for x in (step_losses or []) if isinstance(x, int | float)]
    if not losses:  # tables and older studies may hold only the evaluation records
        losses = [float(r["train_loss"]) for r in records if isinstance(r.get("train_loss"), int | float)]
    out = CurveSummary(points=len(records), steps=len(losses))
    values = [(int(r.get("step", i)), r.get(metric)) for i, r in enumerate(records)]
    values = [(s, float(v)) for s, v in values if isinstance(v, int | float)]
    finite = [(s, v) for s, v in values if math.isfinite(v)]
    if finite:
        best = (max if maximize else min)(finite, key=lambda sv: sv[1])
        out.best_step, out.best_value = best[0], rounded(best[1])
        out.final_value = rounded(finite[-1][1])
    _gap(out, records)
    non_finite = any(not math.isfinite(x) for x in losses) or any(not math.isfinite(v) for _, v in values)
    finite_losses = [x for x in losses if math.isfinite(x)]
    if len(finite_losses) >= 2:
        _loss_shape(out, finite_losses)
    evals = [float(r["eval_loss"]) for r in records if isinstance(r.get("eval_loss"), int | float)
             and math.isfinite(r["eval_loss"])]
    if len(evals) >= 2 and evals[-2]:
        out.recent_drop = rounded((evals[-2] - evals[-1]) / abs(evals[-2]))
    diverged = non_finite or (failed_reason is not None and "diverg" in failed_reason.lower())
    if out.total_drop is not None and out.total_drop <= 1 - DIVERGED_RATIO:
        diverged = True
    if diverged:
        out.flags.append("diverged")
    else:
        if _overfits(records):
            out.flags.append("overfitting")
        if out.total_drop is not None and out.total_drop < UNDERFIT_DROP:
            out.flags.append("underfitting")
        elif out.recent_drop is not None and abs(out.recent_drop) < PLATEAU_DROP:
            out.flags.append("plateau")
        elif out.recent_drop is not None and out.recent_drop >= IMPROVING_DROP:
            out.flags.append("still improving")
    if out.spikes >= SPIKES_SPIKY:
        out.flags.append("spiky")
    return out


def _window(n: int) -> int:
    return max(1, n // 4)



def _loss_shape(out: CurveSummary, losses: list[float]) -> None:
    """Total and recent relative drop of the training loss (window means), volatility and spikes."""
    w = _window(len(losses))
    start, end = _mean(losses[:w]), _mean(losses[-w:])
    out.total_drop = rounded((start - end) / abs(start)) if start else None
    half = losses[-max(2, len(losses) // 2):]
    slope, level = _line(half)
    if level:
        out.recent_drop = rounded(-slope * (len(half) - 1) / abs(level))
    changes = [abs(b - a) for a, b in zip(losses, losses[1:], strict=False)]
    mean = _mean([abs(x) for x in losses])
    out.volatility = rounded(_mean(changes) / mean) if mean else None
    for i in range(1, len(losses) - 1):  # a spike stands out from the steps before it and the steps after it
        around = [sorted(part)[len(part) // 2] for part in (losses[max(0, i - SPIKE_WINDOW):i],
                                                            losses[i + 1:i + 1 + SPIKE_WINDOW])]
        if min(around) > 0 and losses[i] > SPIKE_RATIO * max(around):
            out.spikes += 1


def _gap(out: CurveSummary, records: list[dict[str, Any]]) -> None:
    pairs = [(float(r["eval_loss"]), float(r["train_loss"])) for r in records
             if isinstance(r.get("eval_loss"), int | float) and isinstance(r.get("train_loss"), int | float)
             and math.isfinite(r["eval_loss"]) and math.isfinite(r["train_loss"])]
    if not pairs:
        return
    gaps = [e - t for e, t in pairs]
    out.gap = rounded(gaps[-1])
    if len(gaps) >= 2:
        scale = abs(pairs[-1][0]) or 1.0
        move = (gaps[-1] - gaps[0]) / scale
        out.gap_trend = "widening" if move > GAP_TREND else "narrowing" if move < -GAP_TREND else "steady"


def _overfits(records: list[dict[str, Any]]) -> bool:
    """Validation loss rose ``OVERFIT_RISE`` above its minimum while the training loss fell over the same span."""
    evals = [(float(r["eval_loss"]), r.get("train_loss")) for r in records
             if isinstance(r.get("eval_loss"), int | float) and math.isfinite(r["eval_loss"])]
    if len(evals) < 2:
        return False
    low = min(range(len(evals)), key=lambda i: evals[i][0])
    final, best = evals[-1], evals[low]
    if low == len(evals) - 1 or final[0] < best[0] * (1 + OVERFIT_RISE):
        return False
    train_then, train_now = best[1], final[1]
    return not (isinstance(train_then, int | float) and isinstance(train_now, int | float)) or train_now < train_then


def _line(ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope per step and the fitted value at the first point."""
    n = len(ys)
    xm, ym = (n - 1) / 2, _mean(ys)
    var = sum((i - xm) ** 2 for i in range(n))
    slope = sum((i - xm) * (y - ym) for i, y in enumerate(ys)) / var if var else 0.0
    return slope, ym - slope * xm


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0
