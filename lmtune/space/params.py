"""Typed search parameters (categorical, int, float) and the one rule for "the same value"."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import optuna
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
        bad = [c for c in self.choices if isinstance(c, float) and not math.isfinite(c)]
        if bad:
            raise InputError(self.name, f"choices must be finite, got {bad[0]}")
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


class _Range:
    """What ``Int`` and ``Float`` share: ``low`` to ``high``, on a log scale or with a step, as Optuna's int and
    float distributions are."""

    _DISTRIBUTION: ClassVar[type[IntDistribution] | type[FloatDistribution]]
    _SUGGEST: ClassVar[str]  # the optuna.Trial method that suggests one
    _NOUN: ClassVar[str]  # what ``describe`` calls a value
    _PLAIN_STEP: ClassVar[int | None]  # the step ``describe`` need not mention

    def _check_range(self) -> None:
        if self.low > self.high:
            raise InputError(self.name, f"low ({self.low}) is above high ({self.high})")

    def distribution(self) -> BaseDistribution:
        return self._DISTRIBUTION(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial: optuna.Trial) -> int | float:
        return getattr(trial, self._SUGGEST)(self.name, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        scale = ", log scale" if self.log else (f", step {self.step}" if self.step != self._PLAIN_STEP else "")
        return f"{self._NOUN} in [{self.low}, {self.high}]{scale}"


@dataclass(frozen=True)
class Int(_Range):
    """An integer range, optionally on a log scale or with a step."""

    _DISTRIBUTION, _SUGGEST, _NOUN, _PLAIN_STEP = IntDistribution, "suggest_int", "an integer", 1

    name: str
    low: int
    high: int
    log: bool = False
    step: int = 1

    def __post_init__(self):
        if self.step < 1:
            raise InputError(self.name, f"step must be >= 1, got {self.step}")
        self._check_range()
        if self.log and (self.low < 1 or self.step != 1):
            raise InputError(self.name, "a log-scale int needs low >= 1 and step 1")

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

    def to_dict(self) -> dict[str, Any]:
        return {"type": "int", "low": self.low, "high": self.high, "log": self.log, "step": self.step}


@dataclass(frozen=True)
class Float(_Range):
    """A real range, optionally on a log scale; with a step it is discrete."""

    _DISTRIBUTION, _SUGGEST, _NOUN, _PLAIN_STEP = FloatDistribution, "suggest_float", "a number", None

    name: str
    low: float
    high: float
    log: bool = False
    step: float | None = None

    def __post_init__(self):
        if not all(math.isfinite(v) for v in (self.low, self.high, self.step or 1.0)):
            raise InputError(self.name, f"low, high and step must be finite numbers, got {self.low}, {self.high}, "
                             f"{self.step}")
        if self.step is not None and self.step <= 0:
            raise InputError(self.name, f"step must be > 0, got {self.step}")
        self._check_range()
        if self.log and (self.low <= 0 or self.step is not None):
            raise InputError(self.name, "a log-scale float needs low > 0 and no step")

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


def param_from_spec(name: str, spec: dict[str, Any]) -> Param:
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
            return Categorical(name, tuple(number(v) for v in spec["choices"]))
        low, high = number(spec["low"]), number(spec["high"])
        if kind == "int":
            whole = [_whole(name, v, key) for v, key in ((low, "low"), (high, "high"), (spec.get("step", 1), "step"))]
            return Int(name, whole[0], whole[1], bool(spec.get("log", False)), whole[2])
        step = spec.get("step")
        return Float(name, float(low), float(high), bool(spec.get("log", False)),
                     None if step is None else float(number(step)))
    except KeyError as exc:
        raise InputError(name, f"a {kind} parameter needs {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise InputError(name, f"bad {kind} parameter: {exc}") from None


def _whole(name: str, value: Any, key: str) -> int:
    value = number(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value != int(value):
        raise InputError(name, f"{key} of an int parameter must be a whole number, got {value!r}")
    return int(value)


def number(value: Any) -> Any:
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


def first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
