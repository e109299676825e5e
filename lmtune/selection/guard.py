"""AtS with a guard: move AtS's prediction only where every alternative extrapolation agrees it is off.

Accept-then-Stop ("Selecting Large Language Model to Fine-tune via Rectified Scaling Law", Lin et al. 2024,
arXiv:2402.02314) extrapolates one straight line in log-log. Other extrapolations of the same points (a line
through the last points, a line weighted towards the largest size, the rectified law, LENSLLM's law from
"LENSLLM: Unveiling Fine-Tuning Dynamics for LLM Selection", with its NTK term when the curves
carry one) sometimes know better and sometimes go badly wrong on one curve. The guard takes, per model, the
interval spanned by the alternatives of a setting (and, with ``jackknife``, by each line alternative refitted
with every visible point left out in turn) and returns AtS's prediction clipped into that interval:

* where the interval contains AtS's prediction (the alternatives disagree among themselves, or one point decides
  them), the prediction is AtS's; when every interval does, the result is exactly AtS;
* otherwise it moves AtS only to the nearest end of the interval, i.e. as far as the most conservative
  alternative says, and ``weight`` < 1 moves it part of the way;
* clipping onto an interval that contains the true loss never moves a prediction away from it, so for every model
  whose interval covers its truth the error is at most AtS's.

Which alternatives, whether to jackknife, and the weight are a :class:`Setting`; ``choose_setting`` picks one
from scores on design data only (see :mod:`lmtune.selection.protocol`). Everything here is computed in log loss.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import numpy as np

from lmtune.selection.ats import ats_line, tail_lines
from lmtune.selection.curves import Curves
from lmtune.selection.laws import FitError, Law, NTKLaw, RectifiedLaw

LINES = ("tail3", "kernel")  # refitted in the jackknife (cheap)
LAWS = ("rectified", "lensllm")  # fitted once per model (a refit per point would cost minutes per file)
ALTERNATIVES = LINES + LAWS


@dataclass(frozen=True)
class Setting:
    """Which alternatives span the interval, whether the lines are jackknifed, and how far AtS moves (0..1)."""

    alternatives: tuple[str, ...] = ()
    jackknife: bool = False
    weight: float = 1.0

    @property
    def name(self) -> str:
        if not self.alternatives or self.weight == 0:
            return "ats"
        jack = "+jackknife" if self.jackknife else ""
        return f"{'+'.join(self.alternatives)}{jack}@{self.weight:g}"

    @classmethod
    def parse(cls, text: str) -> Setting:
        """The inverse of ``name``."""
        if text == "ats":
            return cls()
        members, weight = text.rsplit("@", 1)
        jackknife = members.endswith("+jackknife")
        alternatives = tuple(members.removesuffix("+jackknife").split("+"))
        if not set(alternatives) <= set(ALTERNATIVES):
            raise ValueError(f"unknown alternative in {text!r}; known: {', '.join(ALTERNATIVES)}")
        return cls(alternatives, jackknife, float(weight))


def settings_grid() -> list[Setting]:
    """Every setting the design step may choose, most conservative first (ties go to the earlier one).

    AtS itself; every non-empty set of alternatives (more alternatives = wider intervals = fewer moves), with and
    without the jackknife where a line is among them, moving half or all the way.
    """
    out = [Setting()]
    subsets = [c for r in range(len(ALTERNATIVES), 0, -1) for c in itertools.combinations(ALTERNATIVES, r)]
    for weight in (0.5, 1.0):
        for jackknife in (True, False):
            for subset in subsets:
                if jackknife and not set(subset) & set(LINES):
                    continue  # no line to jackknife: the same as without
                out.append(Setting(subset, jackknife, weight))
    return out


@dataclass
class Extrapolations:
    """Log predicted losses at the target: AtS's (n,), and per alternative an (n, 1 + replicates) array whose
    column 0 is the fit on every visible point and the rest are jackknife refits (NaN where a fit failed)."""

    ats: np.ndarray
    alternatives: dict[str, np.ndarray]
    failures: list[str]

    def interval(self, setting: Setting) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) per model spanned by the setting's alternatives; NaN where none gave a value. Without
        alternatives (AtS itself) the interval is AtS's own prediction."""
        if not setting.alternatives:
            return self.ats.copy(), self.ats.copy()
        columns = [self.alternatives[a] if setting.jackknife and a in LINES else self.alternatives[a][:, :1]
                   for a in setting.alternatives]
        values = np.concatenate(columns, axis=1)
        finite = np.isfinite(values).any(axis=1)
        low, high = np.full(len(self.ats), np.nan), np.full(len(self.ats), np.nan)
        low[finite] = np.nanmin(values[finite], axis=1)
        high[finite] = np.nanmax(values[finite], axis=1)
        return low, high

    def predict(self, setting: Setting) -> np.ndarray:
        """Predicted losses (not logs) under ``setting``."""
        return np.exp(guarded(self.ats, *self.interval(setting), setting.weight))


def guarded(anchor: np.ndarray, low: np.ndarray, high: np.ndarray, weight: float = 1.0) -> np.ndarray:
    """``anchor`` clipped into [low, high] (unchanged where the interval is NaN), moved ``weight`` of the way."""
    clipped = np.where(np.isnan(low) | np.isnan(high), anchor, np.clip(anchor, low, high))
    return anchor + weight * (clipped - anchor)


def ntk_law(i: int, seen: Curves) -> Law:
    """LENSLLM's law for model ``i``: F from the model's NTK when the curves carry it, fitted otherwise."""
    if seen.ntk_f is not None and np.isfinite(seen.ntk_f[i]):
        return NTKLaw(float(seen.ntk_f[i]))
    return NTKLaw()


_CACHE: dict[bytes, Extrapolations] = {}
_CACHE_SIZE = 512


def extrapolations(seen: Curves, target: int, k: int = 3, delta: float = 5.0) -> Extrapolations:
    """Every extrapolation the guard can use, for the points a budget lets a method see.

    A pure function of ``seen`` (the visible points, parameter counts and NTK terms) and ``target``, so it is
    memoised on their bytes: a design step and the held-out scoring that follows reuse it without any way to
    carry a loss a method was not shown.
    """
    key = hashlib.sha256(b"|".join([np.int64(target).tobytes(), np.int64(k).tobytes(), np.float64(delta).tobytes(),
                                    seen.sizes.tobytes(), seen.losses.tobytes(),
                                    b"" if seen.ntk_f is None else seen.ntk_f.tobytes()])).digest()
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _compute(seen, target, k, delta)
    return _CACHE[key]


def _compute(seen: Curves, target: int, k: int, delta: float) -> Extrapolations:
    log_t = np.log(target)
    n = len(seen.names)
    ats = np.array([ats_line(seen.sizes, row, k, delta)(log_t) for row in seen.losses])
    positive = np.flatnonzero(seen.sizes > 0)
    lines = {name: np.full((n, 1 + len(positive)), np.nan) for name in LINES}
    laws = {name: np.full((n, 1), np.nan) for name in LAWS}
    failures = []
    for i, row in enumerate(seen.losses):
        for column, drop in enumerate([None, *positive]):
            points = row.copy()
            if drop is not None:
                points[drop] = np.nan
            if np.isfinite(points[positive]).sum() < 2:
                continue
            _, last, kernel = tail_lines(seen.sizes, points, k, delta)
            lines["tail3"][i, column], lines["kernel"][i, column] = last(log_t), kernel(log_t)
        for name, law in (("rectified", RectifiedLaw("robust")), ("lensllm", ntk_law(i, seen))):
            try:
                value = law.fit(seen.sizes, row).predict(target)
            except FitError as error:
                failures.append(f"{seen.names[i]}: {name}: {error}")
                continue
            if np.isfinite(value) and value > 0:
                laws[name][i, 0] = np.log(value)
    return Extrapolations(ats, {**lines, **laws}, failures)


def choose_setting(scores: dict[Setting, list[tuple[float, float]]], baseline: list[tuple[float, float]],
                   grid: list[Setting]) -> tuple[Setting, dict]:
    """The design rule: never below AtS, then the largest mean gain.

    ``scores[s]`` and ``baseline`` list (PearCorr, RelAcc) over the same design cells (file x budget ratio).
    A setting is admissible when its PearCorr and its RelAcc are at least AtS's in every cell; among admissible
    settings the one with the largest mean gain (PearCorr plus RelAcc, in points) wins, ties going to the more
    conservative one (earlier in ``grid``). AtS itself is always admissible, so the rule can always fall back to it.
    """
    base = np.array(baseline, dtype=float)
    best, best_gain, admissible = grid[0], 0.0, 0
    for setting in grid:
        values = np.array(scores[setting], dtype=float)
        gain = _gains(values, base)
        if (gain >= -1e-9).all():
            admissible += 1
            mean = float(gain.sum(axis=1).mean())
            if mean > best_gain + 1e-9:
                best, best_gain = setting, mean
    return best, {"cells": len(baseline), "admissible": admissible, "settings": len(grid),
                  "mean_gain": best_gain}


def _gains(values: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Per cell and metric: the setting's score minus AtS's; an undefined score (NaN) counts as no gain when AtS's
    is undefined too and as a loss otherwise."""
    gain = values - base
    both = np.isnan(values) & np.isnan(base)
    gain[both] = 0.0
    gain[np.isnan(gain)] = -np.inf
    return gain
