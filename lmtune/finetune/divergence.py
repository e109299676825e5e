"""When a training run has diverged: a loss that is not finite, or one that has grown far past where it started.

A diverged run has no score worth comparing, so it fails (``TrialFailed``) as soon as it is seen, instead of
spending the rest of its steps and returning a number.
"""

from __future__ import annotations

import math
from collections import deque

from lmtune.errors import TrialFailed

DIVERGENCE_WINDOW = 3  # training steps averaged before comparing with the initial loss
LOSS_FLOOR = 1.0  # keeps a near-zero first loss from turning ordinary noise into "divergence"


class DivergenceGuard:
    """Fails a run when a training loss is not finite, or when the mean of the last ``DIVERGENCE_WINDOW``
    losses exceeds ``factor`` x the first step's loss (floored at ``LOSS_FLOOR``).

    The first step's loss is the untrained model's, measured before any update; averaging a short window
    keeps one hard batch from failing a healthy run, while a blow-up still fails within a few steps.
    """

    def __init__(self, factor: float):
        self.factor = factor
        self.initial: float | None = None
        self.recent: deque[float] = deque(maxlen=DIVERGENCE_WINDOW)

    def check(self, loss: float, step: int) -> None:
        if not math.isfinite(loss):
            raise TrialFailed(f"diverged: loss {loss} at step {step}")
        if self.initial is None:
            self.initial = loss
        self.recent.append(loss)
        mean = sum(self.recent) / len(self.recent)
        if mean > self.factor * max(self.initial, LOSS_FLOOR):
            raise TrialFailed(f"diverged: loss {mean:.4g} > {self.factor:g} x initial {self.initial:.4g} "
                              f"at step {step}")
