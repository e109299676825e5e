"""Accept-then-Stop (AtS, Lin et al. 2024) and the tail-median extrapolator lmtune proposes on top of it.

A fine-tuning curve is flat at first (the model is still in its "pre-power" phase) and then becomes a power
law, a straight line in log-log. AtS walks back from the largest size: it fits a line to the last p points and
accepts the next earlier point while its residual, standardised by the fit's residual spread, stays below
``delta``; the first rejected point is the phase transition. The line through the accepted points is
extrapolated to the target size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Floor on the residual spread: a perfectly straight run of points (synthetic data) would otherwise turn
#: rounding noise into an infinite standardised residual. Far below the noise of any measured loss.
MIN_SPREAD = 1e-10


@dataclass(frozen=True)
class Line:
    """log L = intercept + slope * log D."""

    slope: float
    intercept: float

    @classmethod
    def fit(cls, log_d: np.ndarray, log_y: np.ndarray, weights: np.ndarray | None = None) -> Line:
        slope, intercept = np.polyfit(log_d, log_y, 1, w=None if weights is None else np.sqrt(weights))
        return cls(float(slope), float(intercept))

    def __call__(self, log_d):
        return self.intercept + self.slope * np.asarray(log_d)


def _positive(sizes, losses) -> tuple[np.ndarray, np.ndarray]:
    d, y = np.asarray(sizes, dtype=float), np.asarray(losses, dtype=float)
    keep = (d > 0) & np.isfinite(y)
    if (y[keep] <= 0).any():
        raise ValueError("losses must be positive")
    return np.log(d[keep]), np.log(y[keep])


def transition_index(sizes, losses, k: int = 3, delta: float = 5.0) -> int:
    """Index (among the positive sizes) of the phase-transition point; the power phase is everything after it.

    Follows the authors' code exactly: p runs over k..n-1; the point before the last p is tested against the line
    through them; when no point is rejected the first point is still treated as the transition (the power phase
    is the last n-1 points); with n <= k points the result is -1 (all points are used).
    """
    log_d, log_y = _positive(sizes, losses)
    n = len(log_d)
    if n <= k:
        return -1
    p = k
    for p in range(k, n):
        line = Line.fit(log_d[-p:], log_y[-p:])
        spread = max(float(np.std(log_y[-p:] - line(log_d[-p:]))), MIN_SPREAD)
        if abs(log_y[-p - 1] - line(log_d[-p - 1])) / spread > delta:
            break
    return n - p - 1


def ats_line(sizes, losses, k: int = 3, delta: float = 5.0) -> Line:
    """The AtS line: least squares through the points after the transition."""
    log_d, log_y = _positive(sizes, losses)
    start = transition_index(sizes, losses, k, delta) + 1
    return Line.fit(log_d[start:], log_y[start:])


def ats_predict(sizes, losses, target: float, k: int = 3, delta: float = 5.0) -> float:
    return float(np.exp(ats_line(sizes, losses, k, delta)(np.log(target))))


def tail_lines(sizes, losses, k: int = 3, delta: float = 5.0, bandwidth_octaves: float = 1.0) -> list[Line]:
    """Three estimates of the tail of the power phase that AtS accepts.

    The curves bend downward in log-log well into their power phase, so the slope over the whole accepted window
    (AtS) lags the current slope. The other two estimates weight the end: a line through the last ``k`` points,
    and a Gaussian-kernel weighted line over the accepted window centred on the largest size (``bandwidth``
    in octaves of D).
    """
    log_d, log_y = _positive(sizes, losses)
    start = transition_index(sizes, losses, k, delta) + 1
    window_d, window_y = log_d[start:], log_y[start:]
    kernel = np.exp(-0.5 * ((window_d - window_d[-1]) / (bandwidth_octaves * np.log(2))) ** 2)
    return [Line.fit(window_d, window_y), Line.fit(log_d[-k:], log_y[-k:]), Line.fit(window_d, window_y, kernel)]


def tail_median_predict(sizes, losses, target: float, k: int = 3, delta: float = 5.0) -> float:
    """Median, in log space, of the three tail extrapolations: robust to whichever one is off for this curve."""
    return float(np.exp(np.median([line(np.log(target)) for line in tail_lines(sizes, losses, k, delta)])))
