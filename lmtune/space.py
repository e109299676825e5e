"""Search spaces: named, typed parameters, discrete pools, Optuna distributions and presets.

A space is a tuple of parameters plus fixed values. Samplers see only the parameters; the
objective receives parameters and fixed values merged. When every parameter is discrete the
space is also a *pool*: the Cartesian product of the parameters' values, which pool-based
samplers (language-BO, grid replays) enumerate.
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from lmtune.errors import InputError

Scalar = bool | int | float | str


@dataclass(frozen=True)
class Categorical:
    """A choice among listed values (numbers or strings); order is kept."""

    name: str
    choices: tuple[Scalar, ...]

    def __post_init__(self):
        if not self.choices:
            raise InputError(self.name, "a categorical parameter needs at least one choice")
        if len(set(self.choices)) != len(self.choices):
            raise InputError(self.name, f"choices repeat a value: {list(self.choices)}")

    def distribution(self) -> BaseDistribution:
        return CategoricalDistribution(self.choices)

    def suggest(self, trial: optuna.Trial) -> Scalar:
        return trial.suggest_categorical(self.name, self.choices)

    def values(self) -> tuple[Scalar, ...]:
        return self.choices

    def position(self, value: Any) -> int | None:
        """The index of ``value`` among the choices, or None when it is not one of them."""
        return _index_of(self.choices, value)

    def contains(self, value: Any) -> bool:
        return self.position(value) is not None

    def canonical(self, value: Any) -> Scalar:
        """The stored choice equal to ``value`` (so ``8.0`` maps to the choice ``8``)."""
        return self.choices[self.position(value)]

    def describe(self) -> str:
        return "one of " + ", ".join(str(c) for c in self.choices)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "categorical", "choices": list(self.choices)}


@dataclass(frozen=True)
class Int:
    """An integer range, optionally on a log scale or with a step."""

    name: str
    low: int
    high: int
    log: bool = False
    step: int = 1

    def __post_init__(self):
        if self.low > self.high:
            raise InputError(self.name, f"low ({self.low}) is above high ({self.high})")
        if self.log and (self.low < 1 or self.step != 1):
            raise InputError(self.name, "a log-scale int needs low >= 1 and step 1")

    def distribution(self) -> BaseDistribution:
        return IntDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial: optuna.Trial) -> int:
        return trial.suggest_int(self.name, self.low, self.high, step=self.step, log=self.log)

    def values(self) -> tuple[int, ...]:
        return tuple(range(self.low, self.high + 1, self.step))

    def position(self, value: Any) -> int | None:
        return int((value - self.low) // self.step) if self.contains(value) else None

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            return False
        return self.low <= value <= self.high and (int(value) - self.low) % self.step == 0

    def canonical(self, value: Any) -> int:
        return int(value)

    def describe(self) -> str:
        scale = ", log scale" if self.log else (f", step {self.step}" if self.step != 1 else "")
        return f"an integer in [{self.low}, {self.high}]{scale}"

    def to_dict(self) -> dict[str, Any]:
        return {"type": "int", "low": self.low, "high": self.high, "log": self.log, "step": self.step}


@dataclass(frozen=True)
class Float:
    """A real range, optionally on a log scale; with a step it is discrete."""

    name: str
    low: float
    high: float
    log: bool = False
    step: float | None = None

    def __post_init__(self):
        if self.low > self.high:
            raise InputError(self.name, f"low ({self.low}) is above high ({self.high})")
        if self.log and (self.low <= 0 or self.step is not None):
            raise InputError(self.name, "a log-scale float needs low > 0 and no step")

    def distribution(self) -> BaseDistribution:
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial: optuna.Trial) -> float:
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def values(self) -> tuple[float, ...]:
        if self.step is None:
            raise InputError(self.name, "a continuous float has no finite set of values; give it a step")
        count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return tuple(round(self.low + i * self.step, 12) for i in range(count))

    def position(self, value: Any) -> int | None:
        return _index_of(self.values(), value)

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not self.low <= value <= self.high:
            return False
        return self.step is None or _index_of(self.values(), value) is not None

    def canonical(self, value: Any) -> float:
        return float(value)

    def describe(self) -> str:
        scale = ", log scale" if self.log else (f", step {self.step}" if self.step else "")
        return f"a number in [{self.low}, {self.high}]{scale}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "float", "low": self.low, "high": self.high, "log": self.log}
        if self.step is not None:
            out["step"] = self.step
        return out


Param = Categorical | Int | Float


#: Significant digits at which two numbers are the same value (see ``canonical_value``).
SIGNIFICANT_DIGITS = 12


def canonical_value(value: Any) -> Any:
    """The one rule for "the same value" in lmtune: the form in which values are compared and keyed.

    Numbers are floats rounded to ``SIGNIFICANT_DIGITS`` significant digits, so ``8``, ``8.0`` and a float step
    stored with rounding are one value; booleans stay booleans (``True`` is never ``1``); strings compare as
    written (``'8'`` is never ``8``). Pool lookups, config keys and validation all use it, so they agree.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return value
    return float(f"{float(value):.{SIGNIFICANT_DIGITS}g}")


def same_value(a: Any, b: Any) -> bool:
    """Whether two parameter values are the same value (``canonical_value``)."""
    return _lookup_key(a) == _lookup_key(b)


def config_key(config: Mapping[str, Any]) -> str:
    """A stable text key of a config: canonical JSON of its canonical values, names sorted."""
    return json.dumps({k: canonical_value(v) for k, v in sorted(config.items())})


def _index_of(values: tuple[Scalar, ...], value: Any) -> int | None:
    """Where ``value`` sits in ``values`` under the same-value rule (first match), or None."""
    target = _lookup_key(value)
    return next((i for i, v in enumerate(values) if _lookup_key(v) == target), None)


def _lookup_key(value: Any) -> tuple[type, Any]:
    """A hashable key under the same-value rule; the type keeps ``True`` apart from ``1.0``."""
    canonical = canonical_value(value)
    try:
        hash(canonical)
    except TypeError:  # an unhashable value (a list) is in no pool: key it by identity
        return (type(canonical), id(value))
    return (type(canonical), canonical)


@dataclass(frozen=True)
class SearchSpace:
    """Named parameters to search plus fixed values passed through unchanged."""

    params: tuple[Param, ...]
    fixed: dict[str, Scalar] = field(default_factory=dict)
    name: str = "custom"

    def __post_init__(self):
        names = [p.name for p in self.params]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise InputError(repeated[0], "is defined twice in the space")
        clash = sorted(set(names) & set(self.fixed))
        if clash:
            raise InputError(clash[0], "is both searched and fixed")

    # -- looking at the space ------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params) + tuple(self.fixed)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise InputError(name, f"is not a searched parameter; searched: {', '.join(p.name for p in self.params)}")

    @property
    def is_discrete(self) -> bool:
        return all(not (isinstance(p, Float) and p.step is None) for p in self.params)

    @property
    def pool_size(self) -> int:
        if not self.is_discrete:
            raise InputError("space", f"{self.name} has continuous parameters and no finite pool")
        return math.prod(len(p.values()) for p in self.params)

    def iter_pool(self) -> Iterator[dict[str, Scalar]]:
        """Every config of a discrete space, in a fixed order (the last parameter varies fastest)."""
        if not self.is_discrete:
            raise InputError("space", f"{self.name} has continuous parameters and no finite pool")
        names = [p.name for p in self.params]
        for combo in itertools.product(*(p.values() for p in self.params)):
            yield {**dict(zip(names, combo, strict=True)), **self.fixed}

    def pool_config(self, index: int) -> dict[str, Scalar]:
        """The searched parameters of config ``index`` of the pool (``iter_pool`` order, fixed values left out)."""
        lookup = self._pool_lookup()
        return {name: values[(index // stride) % len(values)]
                for name, values, _, stride in lookup}

    def pool_index(self, params: Mapping[str, Any]) -> int | None:
        """The pool position of ``params`` (extra names such as fixed values are ignored), or None when a searched
        parameter is missing or its value is not in the pool."""
        index = 0
        for name, _, positions, stride in self._pool_lookup():
            if name not in params:
                return None
            position = positions.get(_lookup_key(params[name]))
            if position is None:
                return None
            index += position * stride
        return index

    def _pool_lookup(self) -> list[tuple[str, tuple[Scalar, ...], dict[Any, int], int]]:
        """Per parameter: name, values, lookup key -> position, and stride (the last varies fastest)."""
        cached = self.__dict__.get("_lookup")
        if cached is None:
            if not self.is_discrete:
                raise InputError("space", f"{self.name} has continuous parameters and no finite pool")
            values = [p.values() for p in self.params]
            strides = [math.prod(len(v) for v in values[i + 1:]) for i in range(len(values))]
            cached = []
            for p, vals, stride in zip(self.params, values, strides, strict=True):
                positions: dict[Any, int] = {}
                for i, v in enumerate(vals):
                    positions.setdefault(_lookup_key(v), i)
                cached.append((p.name, vals, positions, stride))
            object.__setattr__(self, "_lookup", cached)  # frozen dataclass: a derived cache, not state
        return cached

    def distributions(self) -> dict[str, BaseDistribution]:
        return {p.name: p.distribution() for p in self.params}

    # -- using the space -----------------------------------------------------------------------
    def suggest(self, trial: optuna.Trial) -> dict[str, Scalar]:
        """Ask the trial for every parameter; returns them merged with the fixed values."""
        values = {p.name: p.suggest(trial) for p in self.params}
        return {**values, **self.fixed}

    def validate(self, config: dict[str, Any]) -> dict[str, Scalar]:
        """Check a full config against the space; returns it with values in their stored form."""
        unknown = sorted(set(config) - set(self.names))
        if unknown:
            raise InputError(unknown[0], f"is not in space {self.name}; parameters: {', '.join(self.names)}")
        out: dict[str, Scalar] = {}
        for p in self.params:
            if p.name not in config:
                raise InputError(p.name, f"is missing; allowed: {p.describe()}")
            value = config[p.name]
            if not p.contains(value):
                raise InputError(p.name, f"value {value!r} is outside the space; allowed: {p.describe()}")
            out[p.name] = p.canonical(value)
        for name, value in self.fixed.items():
            if name in config and not same_value(config[name], value):
                raise InputError(name, f"is fixed to {value!r} in space {self.name}, got {config[name]!r}")
            out[name] = value
        return out

    def with_fixed(self, **values: Scalar) -> SearchSpace:
        """A copy with these names fixed (removed from the searched parameters if present)."""
        params = tuple(p for p in self.params if p.name not in values)
        return SearchSpace(params, {**self.fixed, **values}, self.name)

    def with_param(self, param: Param) -> SearchSpace:
        """A copy that searches ``param`` (replacing a parameter or fixed value of that name)."""
        params = tuple(p for p in self.params if p.name != param.name) + (param,)
        fixed = {k: v for k, v in self.fixed.items() if k != param.name}
        return SearchSpace(params, fixed, self.name)

    # -- (de)serialization --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": {p.name: p.to_dict() for p in self.params}, "fixed": dict(self.fixed)}

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "space") -> SearchSpace:
        if not isinstance(data, dict) or not isinstance(data.get("params"), dict) or not data["params"]:
            raise InputError("space", f"{source}: expected a mapping with a non-empty 'params' mapping")
        extra = sorted(set(data) - {"name", "params", "fixed"})
        if extra:
            raise InputError(extra[0], f"{source}: unknown key; allowed keys: name, params, fixed")
        params: list[Param] = []
        fixed: dict[str, Scalar] = dict(data.get("fixed") or {})
        for name, spec in data["params"].items():
            if isinstance(spec, list):
                params.append(Categorical(name, tuple(_number(v) for v in spec)))
            elif isinstance(spec, dict):
                params.append(_param_from_spec(name, spec))
            else:
                fixed[name] = _number(spec)
        return cls(tuple(params), fixed, str(data.get("name", Path(source).stem)))

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        path = Path(path)
        if not path.is_file():
            raise InputError("space", f"file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise InputError("space", f"{path} is not valid YAML: {_first_line(exc)}") from None
        return cls.from_dict(data, source=str(path))


def _param_from_spec(name: str, spec: dict[str, Any]) -> Param:
    kind = spec.get("type", "categorical" if "choices" in spec else None)
    keys = {"categorical": {"type", "choices"}, "int": {"type", "low", "high", "log", "step"},
            "float": {"type", "low", "high", "log", "step"}}
    if kind not in keys:
        raise InputError(name, f"type {kind!r} is not allowed; allowed: categorical, int, float")
    extra = sorted(set(spec) - keys[kind])
    if extra:
        allowed = ", ".join(sorted(keys[kind]))
        raise InputError(name, f"unknown key {extra[0]!r} for a {kind} parameter; allowed: {allowed}")
    try:
        if kind == "categorical":
            return Categorical(name, tuple(_number(v) for v in spec["choices"]))
        low, high = _number(spec["low"]), _number(spec["high"])
        if kind == "int":
            return Int(name, int(low), int(high), bool(spec.get("log", False)), int(spec.get("step", 1)))
        step = spec.get("step")
        return Float(name, float(low), float(high), bool(spec.get("log", False)),
                     None if step is None else float(_number(step)))
    except KeyError as exc:
        raise InputError(name, f"a {kind} parameter needs {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise InputError(name, f"bad {kind} parameter: {exc}") from None


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-5`` as a string; accept it as the number the user meant."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                return value
    return value


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


# -- presets -----------------------------------------------------------------------------------

#: The ten learning rates of seed 003 Table 1 (1e-6..5e-3). The paper lists only the range and
#: count; these are the values its reported configs use (Tables A1-A5) plus the two endpoints.
PAPER_LEARNING_RATES = (1e-6, 5e-6, 2e-5, 3e-5, 5e-5, 1e-4, 3e-4, 4e-4, 5e-4, 5e-3)


def _lora_paper() -> SearchSpace:
    return SearchSpace(
        (
            Categorical("rank", tuple(2**i for i in range(9))),
            Categorical("alpha_ratio", tuple(2.0**k for k in range(-1, 8))),
            Categorical("batch_size", tuple(2**i for i in range(1, 9))),
            Categorical("learning_rate", PAPER_LEARNING_RATES),
            Categorical("dropout", tuple(round(0.05 * i, 2) for i in range(7))),
        ),
        {"variant": "lora"},
        "lora-paper",
    )


def _lora_small() -> SearchSpace:
    """A few hundred configs that train in seconds each on a small encoder on CPU."""
    return SearchSpace(
        (
            Categorical("rank", (4, 8, 16, 32)),
            Categorical("alpha_ratio", (0.5, 1.0, 2.0, 4.0)),
            Categorical("batch_size", (8, 16)),
            Categorical("learning_rate", (3e-4, 1e-3, 2e-3, 3e-3, 5e-3)),
            Categorical("dropout", (0.0, 0.1)),
        ),
        {"variant": "lora"},
        "lora-small",
    )


PRESETS = {"lora-paper": _lora_paper, "lora-small": _lora_small}


def load_space(name_or_path: str | Path) -> SearchSpace:
    """A preset by name, or a YAML file."""
    key = str(name_or_path)
    if key in PRESETS:
        return PRESETS[key]()
    if key.endswith((".yaml", ".yml")) or Path(key).exists():
        return SearchSpace.from_yaml(key)
    raise InputError("space", f"unknown preset {key!r}; presets: {', '.join(PRESETS)}, or a YAML file path")
