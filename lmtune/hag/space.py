"""Decoding hyperparameters per input: one config, the grid the label search walks, and reading a model's reply.

The four hyperparameters of "LLM can Achieve Self-Regulation via Hyperparameter Aware Generation"
(arXiv:2402.11251): temperature, top_p, top_k and repetition_penalty. A config with temperature 0 is greedy,
where top_p and top_k change nothing; it is kept in one canonical form (top_p 1, top_k 0) so that the search
never pays twice for the same decoding. ``top_k`` 0 means no cut.

A stage-1 reply is parsed leniently (``t=0.5 p=0.9 k=8 r=1.2``, ``temperature: 0.5, ...`` or JSON), then
validated: a value outside the space's range is clamped to it, a missing or non-finite one is taken from the
fallback config, and a reply with no value at all is the fallback (each case counted by the caller).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass, field, replace
from itertools import product
from typing import Any

from lmtune.errors import InputError
from lmtune.llm.generation import SAMPLING_DEFAULTS

#: The hyperparameters chosen per input: every sampling hyperparameter of a request.
PARAMS = tuple(SAMPLING_DEFAULTS)
SHORT = {"temperature": "t", "top_p": "p", "top_k": "k", "repetition_penalty": "r"}
_KEY = re.compile(r"(?<![A-Za-z_])(temperature|top_p|top_k|repetition_penalty|t|p|k|r)[\"']?\s*[:=]\s*[\"']?"
                  r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf|-inf)", re.IGNORECASE)


@dataclass(frozen=True, order=True)
class Decoding:
    """One decoding config; the defaults are the OpenAI-compatible API's (what a request without them gets).

    ``lmtune infer``'s ``InferencePoint`` holds the same four, but leaves out those it does not search (None); here
    each has its value, because a per-input config sends all four."""

    temperature: float = SAMPLING_DEFAULTS["temperature"]
    top_p: float = SAMPLING_DEFAULTS["top_p"]
    top_k: int = SAMPLING_DEFAULTS["top_k"]
    repetition_penalty: float = SAMPLING_DEFAULTS["repetition_penalty"]

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def canonical(self) -> Decoding:
        return replace(self, top_p=1.0, top_k=0) if self.greedy else self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        """The short form a HAG model learns to emit: ``t=0.5 p=0.9 k=8 r=1.2``."""
        return " ".join(f"{SHORT[name]}={_number(getattr(self, name))}" for name in PARAMS)

    def request_fields(self) -> dict[str, Any]:
        return self.as_dict()

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Decoding:
        return cls(float(values["temperature"]), float(values["top_p"]), int(values["top_k"]),
                   float(values["repetition_penalty"]))

    @classmethod
    def filled(cls, values: dict[str, Any]) -> Decoding:
        """The decoding a request with these sampling fields gets (a missing or None one: the API's default), in
        canonical form; e.g. the best config of ``lmtune infer``, which leaves out what it did not search."""
        return cls(**{name: SAMPLING_DEFAULTS[name] if values.get(name) is None else values[name]
                      for name in PARAMS}).canonical()


def _number(value: float) -> str:
    return f"{value:g}"


#: Fine grids: the values the label search can reach, ordered (``top_k``: tightest cut first, 0 = none last).
DEFAULT_GRID = {"temperature": (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0),
                "top_p": (0.5, 0.7, 0.8, 0.9, 0.95, 1.0),
                "top_k": (2, 4, 8, 16, 32, 0),
                "repetition_penalty": (1.0, 1.1, 1.2, 1.35, 1.5, 1.75, 2.0)}

#: Values of each hyperparameter in the coarse sweep: 4 x 2 x 2 x 2 sampling configs and 2 greedy ones.
COARSE_LEVELS = {"temperature": 5, "top_p": 2, "top_k": 2, "repetition_penalty": 2}


@dataclass(frozen=True)
class DecodingSpace:
    """The grid of each hyperparameter; its ends are the range emitted values are clamped to."""

    grid: dict[str, tuple] = field(default_factory=lambda: dict(DEFAULT_GRID))

    def __post_init__(self):
        for name in PARAMS:
            values = self.grid.get(name)
            if not values:
                raise InputError(f"{name}_grid", "give at least one value")
            if len(set(values)) != len(values):
                raise InputError(f"{name}_grid", f"values repeat: {list(values)}")
        low = {"temperature": 0.0, "top_p": 1e-9, "top_k": 0, "repetition_penalty": 1e-9}
        for name in PARAMS:
            if any(not math.isfinite(v) or v < low[name] for v in self.grid[name]):
                raise InputError(f"{name}_grid", f"values must be finite and >= {low[name]:g}, "
                                 f"got {list(self.grid[name])}")
        if any(v > 1 for v in self.grid["top_p"]):
            raise InputError("top_p_grid", f"values must be <= 1, got {list(self.grid['top_p'])}")
        if any(v != int(v) for v in self.grid["top_k"]):
            raise InputError("top_k_grid", f"values must be whole numbers, got {list(self.grid['top_k'])}")

    @classmethod
    def from_dict(cls, data: dict[str, list]) -> DecodingSpace:
        return cls({name: tuple(int(v) if name == "top_k" else float(v) for v in data[name]) for name in PARAMS})

    def to_dict(self) -> dict[str, list]:
        return {name: list(self.grid[name]) for name in PARAMS}

    # -- the grid --------------------------------------------------------------------------------------------

    def config(self, index: tuple[int, ...]) -> Decoding:
        return Decoding(*(self.grid[name][i] for name, i in zip(PARAMS, index, strict=True))).canonical()

    def index(self, config: Decoding) -> tuple[int, ...]:
        return tuple(self.grid[name].index(getattr(config, name)) for name in PARAMS)

    def all_configs(self) -> list[Decoding]:
        return _unique(self.config(i) for i in product(*(range(len(self.grid[n])) for n in PARAMS)))

    def coarse_indices(self, name: str) -> list[int]:
        """The coarse sweep's values of one hyperparameter: ``COARSE_LEVELS`` evenly spread grid values, both
        ends included."""
        last = len(self.grid[name]) - 1
        levels = min(COARSE_LEVELS[name], last + 1)
        return sorted({round(k * last / max(1, levels - 1)) for k in range(levels)})

    def coarse_configs(self) -> list[Decoding]:
        return _unique(self.config(i) for i in product(*(self.coarse_indices(n) for n in PARAMS)))

    def coarse_neighbours(self, config: Decoding) -> list[Decoding]:
        """The coarse configs around a grid config: per hyperparameter its own value if coarse, else the coarse
        values on either side. A config lies in a pruned region only when all of these were dominated."""
        options = []
        for name, i in zip(PARAMS, self._loose_index(config), strict=True):
            coarse = self.coarse_indices(name)
            options.append([i] if i in coarse else [max(c for c in coarse if c < i), min(c for c in coarse if c > i)])
        return _unique(self.config(i) for i in product(*options))

    def _loose_index(self, config: Decoding) -> tuple[int, ...]:
        """The grid index; greedy configs' top_p and top_k (1 and 0) need not be grid values."""
        index = []
        for name in PARAMS:
            values, value = self.grid[name], getattr(config, name)
            index.append(values.index(value) if value in values else len(values) - 1)
        return tuple(index)

    def step(self, config: Decoding, name: str, direction: int) -> Decoding | None:
        """The grid neighbour one value up or down in one hyperparameter, or None past the grid's end."""
        index = list(self._loose_index(config))
        at = PARAMS.index(name)
        index[at] += direction
        if not 0 <= index[at] < len(self.grid[name]):
            return None
        return self.config(tuple(index))

    def random_config(self, rng: random.Random) -> Decoding:
        """A config drawn uniformly from the grid's index product (then made canonical)."""
        return self.config(tuple(rng.randrange(len(self.grid[name])) for name in PARAMS))

    # -- emitted values ------------------------------------------------------------------------------------------

    def bounds(self, name: str) -> tuple[float, float]:
        values = self.grid[name]
        if name == "top_k":
            return 0, max(values)
        return min(values), max(values)

    def parse(self, reply: str, fallback: Decoding) -> Parsed:
        """A stage-1 reply as a valid config, and what had to be repaired (see the module docstring)."""
        found: dict[str, float] = {}
        for key, value in _KEY.findall(reply or ""):
            name = next(n for n in PARAMS if key.lower() in (n, SHORT[n]))
            found.setdefault(name, float(value))
        usable = {name: value for name, value in found.items() if math.isfinite(value)}
        if not usable:
            return Parsed(fallback, fallback=True, missing=list(PARAMS))
        values, missing, clamped = {}, [], []
        for name in PARAMS:
            if name not in usable:
                values[name] = getattr(fallback, name)
                missing.append(name)
                continue
            value = usable[name]
            low, high = self.bounds(name)
            if name == "top_k":
                value = 0 if value < 0 else round(value)  # vLLM's -1 (no cut) is 0 here
                if value > high:
                    value = high
                    clamped.append(name)
            elif not low <= value <= high:
                value = min(max(value, low), high)
                clamped.append(name)
            values[name] = value
        return Parsed(Decoding(**values).canonical(), fallback=False, missing=missing, clamped=clamped)


@dataclass(frozen=True)
class Parsed:
    """A parsed stage-1 reply: the config to use and what was repaired."""

    config: Decoding
    fallback: bool = False
    missing: list[str] = field(default_factory=list)
    clamped: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.fallback:
            return "fallback"
        return "clamped" if self.clamped else "filled" if self.missing else "ok"


def _unique(configs) -> list[Decoding]:
    return list(dict.fromkeys(configs))
