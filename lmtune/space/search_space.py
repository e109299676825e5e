"""Search spaces: named, typed parameters plus fixed values; discrete pools and their indexing.

A space is a tuple of parameters plus fixed values. Samplers see only the parameters; the
objective receives parameters and fixed values merged. When every parameter is discrete the
space is also a *pool*: the Cartesian product of the parameters' values, which pool-based
samplers (language-BO, grid replays) enumerate.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import BaseDistribution

from lmtune.config import read_user_text
from lmtune.errors import InputError
from lmtune.space.params import (
    Float,
    Listed,
    Param,
    Scalar,
    _lookup_key,
    canonical_value,
    first_line,
    number,
    param_from_list,
    param_from_spec,
    same_value,
)

#: The format of a space's mapping (``to_dict``); a stored mapping without it was written before ordered
#: parameters existed (``from_stored``).
SPACE_FORMAT = 2


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

    def values_dict(self) -> dict[str, Any]:
        """The configs the space holds, whatever a sampler is told of them: each listed parameter as its values (a
        categorical mapping, as every space was written before ordered parameters existed), each range as its
        bounds, and the fixed values. What identifies a space's results (``same_values``, a transfer source's
        fingerprint) without its encoding."""
        params = {p.name: {"type": "categorical", "choices": list(p.values())} if isinstance(p, Listed) else p.to_dict()
                  for p in self.params}
        return {"name": self.name, "params": params, "fixed": dict(self.fixed)}

    def same_values(self, other: SearchSpace) -> bool:
        """Whether two spaces hold the same configs (names, each parameter's values or range, fixed values), however
        a sampler is told to see them (ordered or not, log scale or not): a study may resume under either."""
        return _canonical(self.values_dict()) == _canonical(other.values_dict())

    # -- (de)serialization --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": {p.name: p.to_dict() for p in self.params}, "fixed": dict(self.fixed),
                "format": SPACE_FORMAT}

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "space", legacy: bool = False) -> SearchSpace:
        """A space from its mapping: ``params`` (each a list, a mapping as ``params.param_from_spec`` reads, or a
        value to fix), ``fixed`` and ``name``. With ``legacy`` its categorical numbers read as a space written
        before ordered parameters existed meant them (``params.legacy_param``)."""
        if not isinstance(data, dict) or not isinstance(data.get("params"), dict) or not data["params"]:
            raise InputError("space", f"{source}: expected a mapping with a non-empty 'params' mapping")
        extra = sorted(set(data) - {"name", "params", "fixed", "format"})
        if extra:
            raise InputError(extra[0], f"{source}: unknown key; allowed keys: name, params, fixed, format")
        if data.get("format", SPACE_FORMAT) != SPACE_FORMAT:
            raise InputError("space", f"{source}: format {data['format']!r} is not one this lmtune reads "
                             f"({SPACE_FORMAT})")
        params: list[Param] = []
        fixed: dict[str, Scalar] = dict(data.get("fixed") or {})
        for name, spec in data["params"].items():
            if isinstance(spec, list):
                params.append(param_from_list(name, spec))
            elif isinstance(spec, dict):
                params.append(param_from_spec(name, spec, legacy=legacy))
            else:
                fixed[name] = number(spec)
        return cls(tuple(params), fixed, str(data.get("name", Path(source).stem)))

    @classmethod
    def from_stored(cls, data: Any, *, source: str = "space") -> SearchSpace:
        """A space lmtune stored (a study's ``space`` attribute, a table's grid): one without a ``format`` was
        written before ordered parameters existed, and its categorical numbers read as ordered by the old rule."""
        legacy = isinstance(data, dict) and "format" not in data
        return cls.from_dict(data, source=source, legacy=legacy)

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        path = Path(path)
        if not path.is_file():
            raise InputError("space", f"file {path} does not exist")
        try:
            data = yaml.safe_load(read_user_text(path, "space"))
        except yaml.YAMLError as exc:
            raise InputError("space", f"{path} is not valid YAML: {first_line(exc)}") from None
        return cls.from_dict(data, source=str(path))


def _canonical(data: Any) -> Any:
    """``data`` with every number in its canonical form (``canonical_value``), for comparing."""
    if isinstance(data, dict):
        return {key: _canonical(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_canonical(value) for value in data]
    return canonical_value(data)
