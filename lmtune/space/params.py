"""Typed search parameters (categorical, ordered, int, float) and the one rule for "the same value"."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
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

#: How spaces written before ordered parameters existed read their numbers (``legacy_param``): a positive list whose
#: largest value is at least this multiple of its smallest was on a log scale (powers of two and decades alike).
LEGACY_LOG_RATIO = 4.0


class _Listed:
    """What ``Categorical`` and ``Ordered`` share: a finite list of values (``choices``). Optuna stores both as a
    ``CategoricalDistribution`` of the values, so a trial's parameters are the values themselves whichever way a
    sampler sees them."""

    name: str
    choices: tuple[Scalar, ...]

    def _check_choices(self) -> None:
        if not self.choices:
            raise InputError(self.name, f"a {self._KIND} parameter needs at least one value")
        bad = [c for c in self.choices if isinstance(c, float) and not math.isfinite(c)]
        if bad:
            raise InputError(self.name, f"values must be finite, got {bad[0]}")
        if len({_lookup_key(c) for c in self.choices}) != len(self.choices):
            raise InputError(self.name, f"values repeat a value: {list(self.choices)}")

    def distribution(self) -> BaseDistribution:
        return CategoricalDistribution(self.choices)

    def suggest(self, trial: optuna.Trial) -> Scalar:
        return trial.suggest_categorical(self.name, self.choices)

    def values(self) -> tuple[Scalar, ...]:
        return self.choices

    def position(self, value: Any) -> int | None:
        """The index of ``value`` among the values, or None when it is not one of them."""
        return _index_of(self.choices, value)

    def contains(self, value: Any) -> bool:
        return self.position(value) is not None

    def canonical(self, value: Any) -> Scalar:
        """The stored value equal to ``value`` (so ``8.0`` maps to the value ``8``)."""
        return self.choices[self.position(value)]


@dataclass(frozen=True)
class Categorical(_Listed):
    """An unordered choice among listed values: names (variant, target modules), or numbers declared unordered.
    A sampler sees each value as a label of its own; order is kept only as written."""

    _KIND: ClassVar[str] = "categorical"

    name: str
    choices: tuple[Scalar, ...]

    def __post_init__(self):
        self._check_choices()

    def describe(self) -> str:
        return "one of " + ", ".join(str(c) for c in self.choices)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "categorical", "choices": list(self.choices)}


@dataclass(frozen=True)
class Ordered(_Listed):
    """Numbers in strictly increasing order, on a linear or a declared log scale (rank, batch size, learning rate).

    Stored as the values (``distribution``), so studies read back the values; a sampler that models numbers sees
    the index instead (``index_distribution``, ``value_at``, ``position``): Optuna's samplers through
    ``lmtune.samplers.encoding``, NOMAD in the benchmark. Language-BO reads the values and, with ``log``, their
    logarithms.
    """

    _KIND: ClassVar[str] = "ordered"

    name: str
    choices: tuple[int | float, ...]
    log: bool = False

    def __post_init__(self):
        words = [c for c in self.choices if not _is_number(c)]
        if words:
            raise InputError(self.name, f"ordered values must be numbers, got {words[0]!r}; names are a categorical "
                             "parameter: a list with a name in it, or {type: categorical, choices: [...]}")
        self._check_choices()
        keys = [canonical_value(c) for c in self.choices]
        if keys != sorted(keys):
            ascending = ", ".join(str(c) for c in sorted(self.choices))
            raise InputError(self.name, f"ordered values must increase: write [{ascending}], or "
                             "{type: categorical, choices: [...]} for an unordered choice")
        if self.log and self.choices[0] <= 0:
            raise InputError(self.name, f"a log scale needs every value > 0, got {self.choices[0]}")

    def index_distribution(self) -> IntDistribution:
        """The values as their positions 0..n-1: what a sampler of numbers should search."""
        return IntDistribution(0, len(self.choices) - 1)

    def value_at(self, index: int) -> int | float:
        return self.choices[index]

    def describe(self) -> str:
        scale = ", log scale" if self.log else ""
        return "one of " + ", ".join(str(c) for c in self.choices) + f" (ordered{scale})"

    def to_dict(self) -> dict[str, Any]:
        return {"type": "ordered", "values": list(self.choices), "log": self.log}


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


Param = Categorical | Ordered | Int | Float
#: The parameters whose values are listed (a finite list; both stored as Optuna categoricals).
Listed = Categorical | Ordered


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


def param_from_list(name: str, values: Sequence[Any]) -> Param:
    """A YAML list: numbers are ordered (on a linear scale: declare a log scale with ``{values: [...], log: true}``);
    a list with a name (or a boolean) in it is categorical."""
    values = tuple(number(v) for v in values)
    if values and all(_is_number(v) for v in values):
        return Ordered(name, values)
    return Categorical(name, values)


def legacy_param(name: str, choices: Sequence[Any]) -> Param:
    """How a categorical list of a space written before ordered parameters existed reads: increasing numbers are
    ordered, on a log scale when all are positive and the largest is at least ``LEGACY_LOG_RATIO`` times the
    smallest (the rule language-BO guessed the scale by). Only old table files and old studies' stored spaces are
    read so (``SearchSpace.from_stored``); a space written now says what it means. Numbers listed out of order stay
    categorical: a study stored them in that order, and Optuna refuses another order of the same choices."""
    choices = tuple(number(v) for v in choices)
    keys = [canonical_value(v) for v in choices]
    if not choices or not all(_is_number(v) for v in choices) or keys != sorted(set(keys)):
        return Categorical(name, choices)
    return Ordered(name, choices, choices[0] > 0 and choices[-1] >= LEGACY_LOG_RATIO * choices[0])


#: The keys each kind of parameter takes in a space's mapping, and how a message names the kind.
KIND_WORDS = {"categorical": "a categorical", "ordered": "an ordered", "int": "an int", "float": "a float"}
SPEC_KEYS = {"categorical": {"type", "choices"}, "ordered": {"type", "values", "log"},
             "int": {"type", "low", "high", "log", "step"}, "float": {"type", "low", "high", "log", "step"}}


def param_from_spec(name: str, spec: dict[str, Any], *, legacy: bool = False) -> Param:
    """A parameter from its mapping: ``{type: categorical, choices: [...]}`` (``choices`` alone will do),
    ``{values: [...], log: true}`` (ordered numbers; ``type: ordered`` may be written), or an int or float range.
    With ``legacy`` (a space written before ordered parameters existed) categorical numbers read as
    ``legacy_param`` says."""
    kind = spec.get("type", "categorical" if "choices" in spec else "ordered" if "values" in spec else None)
    if kind not in SPEC_KEYS:
        raise InputError(name, f"type {kind!r} is not allowed; allowed: {', '.join(SPEC_KEYS)} (a list of numbers "
                         "is ordered)")
    extra = sorted(set(spec) - SPEC_KEYS[kind])
    if extra:
        allowed = ", ".join(sorted(SPEC_KEYS[kind]))
        raise InputError(name, f"unknown key {extra[0]!r} for {KIND_WORDS[kind]} parameter; allowed: {allowed}")
    try:
        if kind == "categorical":
            choices = _listed(name, spec["choices"], "choices")
            return legacy_param(name, choices) if legacy else Categorical(name, choices)
        if kind == "ordered":
            return Ordered(name, _listed(name, spec["values"], "values"), _flag(name, spec.get("log", False)))
        low, high, log = number(spec["low"]), number(spec["high"]), _flag(name, spec.get("log", False))
        if kind == "int":
            whole = [_whole(name, v, key) for v, key in ((low, "low"), (high, "high"), (spec.get("step", 1), "step"))]
            return Int(name, whole[0], whole[1], log, whole[2])
        step = spec.get("step")
        return Float(name, float(low), float(high), log, None if step is None else float(number(step)))
    except KeyError as exc:
        raise InputError(name, f"{KIND_WORDS[kind]} parameter needs {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise InputError(name, f"bad {kind} parameter: {exc}") from None


def _listed(name: str, values: Any, key: str) -> tuple[Any, ...]:
    if not isinstance(values, list | tuple):
        raise InputError(name, f"{key} must be a list, got {values!r}")
    return tuple(number(v) for v in values)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InputError(name, f"log must be true or false, got {value!r}")
    return value


def _is_number(value: Any) -> bool:
    """A number a scale can hold: an int or a finite-or-not float, never a boolean."""
    return isinstance(value, int | float) and not isinstance(value, bool)


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
