"""The hyperparameters of one LoRA fine-tuning run, independent of how they were searched."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from lmtune.errors import InputError

Variant = Literal["lora", "rslora", "dora", "pissa"]
VARIANTS: tuple[str, ...] = ("lora", "rslora", "dora", "pissa")
#: Names a search space may use for LoRA; ``alpha_ratio`` is alpha / rank.
PARAM_NAMES: tuple[str, ...] = ("rank", "alpha", "alpha_ratio", "learning_rate", "batch_size", "dropout", "variant")


@dataclass(frozen=True)
class LoraHyperparams:
    """One LoRA config. ``alpha`` is absolute; search spaces express it as ``alpha_ratio * rank``."""

    rank: int = 8
    alpha: float = 16.0
    learning_rate: float = 2e-4
    batch_size: int = 16
    dropout: float = 0.0
    variant: Variant = "lora"

    def __post_init__(self):
        if self.rank < 1:
            raise InputError("rank", f"must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise InputError("alpha", f"must be > 0, got {self.alpha}")
        if self.learning_rate <= 0:
            raise InputError("learning_rate", f"must be > 0, got {self.learning_rate}")
        if self.batch_size < 1:
            raise InputError("batch_size", f"must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError("dropout", f"must be in [0, 1), got {self.dropout}")
        if self.variant not in VARIANTS:
            raise InputError("variant", f"must be one of {', '.join(VARIANTS)}, got {self.variant!r}")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> LoraHyperparams:
        """Build from a sampled parameter dict; ``alpha_ratio`` (alpha / rank) is accepted for ``alpha``."""
        values = dict(params)
        unknown = sorted(set(values) - set(PARAM_NAMES))
        if unknown:
            raise InputError(unknown[0], f"is not a LoRA hyperparameter; allowed: {', '.join(PARAM_NAMES)}")
        for name in ("rank", "batch_size"):
            if name in values:
                values[name] = _whole(name, values[name])
        for name in ("alpha", "alpha_ratio", "learning_rate", "dropout"):
            if name in values:
                values[name] = _real(name, values[name])
        rank = values.pop("rank", cls.rank)
        ratio = values.pop("alpha_ratio", None)
        if ratio is not None:
            if "alpha" in values:
                raise InputError("alpha", "give either alpha or alpha_ratio, not both")
            values["alpha"] = ratio * rank
        return cls(rank=rank, **values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _whole(name: str, value: Any) -> int:
    """A whole number (4 or 4.0), never silently truncated (4.5) and never a bool or a string."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value != int(value):
        raise InputError(name, f"must be a whole number, got {value!r}")
    return int(value)


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(name, f"must be a finite number, got {value!r}")
    return float(value)
