"""The numbers of a config as a point in the unit cube, and a space-filling first design over them.

A numeric GP (Optuna's ``GPSampler``, BoTorch) sees a LoRA config as its values: learning rate, rank, alpha and
batch size are scale parameters whose effect is multiplicative, so the spaces declare them on a log scale
(``Ordered(..., log=True)``); dropout, which holds 0, is linear. Each number enters on the scale its parameter
declares; names (variant, target modules), and numbers a space declares unordered (``Categorical``), enter
one-hot. Each dimension is scaled to [0, 1] over the values of *this* space, so a config from another space (a
transferred observation) may lie outside the cube: its values are placed where they are, not snapped to this
space's values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lmtune.space import Categorical, SearchSpace


class NumericFeatures:
    """Maps configs of ``space`` to float64 vectors: one dimension per ordered or ranged parameter (log-scaled where
    it declares a log scale), one per choice of a categorical parameter (one-hot), 0/1 for booleans."""

    def __init__(self, space: SearchSpace):
        self.space = space
        self._columns: list[tuple[str, str, Any]] = []  # (parameter, kind, data)
        for param in space.params:
            values = param.values()
            if isinstance(param, Categorical) and all(isinstance(v, bool) for v in values):
                self._columns.append((param.name, "bool", None))
            elif isinstance(param, Categorical):
                for choice in param.choices:
                    self._columns.append((param.name, "name", choice))
            else:
                points = [math.log(v) if param.log else float(v) for v in values]
                low, high = min(points), max(points)
                self._columns.append((param.name, "log" if param.log else "linear", (low, high - low or 1.0)))
        #: Which dimensions are numeric (not one-hot): the space-filling design covers these.
        self.numeric_dims = [i for i, (_, kind, _) in enumerate(self._columns) if kind in ("log", "linear", "bool")]

    @property
    def dim(self) -> int:
        return len(self._columns)

    def kinds(self) -> dict[str, str]:
        """Per parameter: ``number`` or ``name``, what a transferred observation must agree on."""
        return {name: "name" if kind == "name" else "number" for name, kind, _ in self._columns}

    def encode(self, configs: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        """(len(configs), dim) float64. Numbers outside this space's range extrapolate; a name this space does not
        have encodes as all zeros."""
        out = np.zeros((len(configs), self.dim))
        for j, (name, kind, data) in enumerate(self._columns):
            for i, config in enumerate(configs):
                value = config[name]
                if kind == "name":
                    out[i, j] = float(value == data and type(value) is type(data))
                elif kind == "bool":
                    out[i, j] = float(bool(value))
                else:
                    low, span = data
                    x = math.log(value) if kind == "log" and value > 0 else float(value)
                    out[i, j] = (x - low) / span
        return torch.from_numpy(out)

    def pool(self) -> torch.Tensor:
        """Features of every config of the space's pool, in pool order."""
        return self.encode([self.space.pool_config(i) for i in range(self.space.pool_size)])


def space_filling(features: torch.Tensor, free: np.ndarray, count: int, seed: int,
                  dims: Sequence[int] | None = None) -> list[int]:
    """``count`` pool indices spread over the cube: a scrambled Sobol sequence over ``dims`` (default all),
    each point snapped to the nearest free config not chosen yet (ties broken at random).

    Sobol points cover every one-dimensional projection evenly (each parameter sees low, middle and high
    values) and fill the cube better than independent draws ("On the distribution of points in a cube and
    the approximate evaluation of integrals", Sobol', 1967; Owen's scrambling keeps it random per seed).
    """
    from scipy.stats import qmc

    dims = list(range(features.shape[1])) if dims is None else list(dims)
    rng = np.random.default_rng(seed)
    points = qmc.Sobol(len(dims), scramble=True, seed=rng).random_base2(max(0, math.ceil(math.log2(max(count, 1)))))
    x = features[:, dims].numpy()
    available = free.copy()
    chosen: list[int] = []
    for point in points[:count]:
        candidates = np.flatnonzero(available)
        if not len(candidates):
            break
        distance = ((x[candidates] - point) ** 2).sum(1)
        near = candidates[distance <= distance.min() + 1e-12]
        pick = int(rng.choice(near))
        chosen.append(pick)
        available[pick] = False
    return chosen
