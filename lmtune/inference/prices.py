"""What a token costs, per model: a YAML price table shipped with lmtune and extended by the user.

A model without a price is an input error before any call (FLAML crashed mid-tuning instead), because a
budget in dollars means nothing for a model whose tokens have no price.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from lmtune.config import read_user_text
from lmtune.errors import InputError

BUILTIN = Path(__file__).with_name("prices.yaml")


@dataclass(frozen=True)
class Price:
    """Dollars per 1,000 prompt (input) and completion (output) tokens."""

    input: float
    output: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1000.0


class PriceTable:
    """Prices by model name; ``extra`` files override the built-in table entry by entry."""

    def __init__(self, prices: dict[str, Price]):
        self.prices = dict(prices)

    @classmethod
    def load(cls, *extra: str | Path | None) -> PriceTable:
        prices = _read(BUILTIN)
        for path in extra:
            if path is not None:
                prices.update(_read(Path(path)))
        return cls(prices)

    def __getitem__(self, model: str) -> Price:
        if model not in self.prices:
            known = ", ".join(sorted(self.prices))
            raise InputError("prices", f"no price for model {model!r}; add a line `{model}: {{input: <$ per 1K "
                             f"tokens>, output: <$ per 1K tokens>}}` to a YAML file given as `prices` "
                             f"(priced now: {known})")
        return self.prices[model]


def _read(path: Path) -> dict[str, Price]:
    if not path.is_file():
        raise InputError("prices", f"price file {path} does not exist")
    try:
        data = yaml.safe_load(read_user_text(path, "prices")) or {}
    except yaml.YAMLError as exc:
        raise InputError("prices", f"{path} is not valid YAML: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(data, dict):
        raise InputError("prices", f"{path} must map model names to {{input: X, output: Y}}")
    prices = {}
    for model, entry in data.items():
        try:
            price = Price(float(entry["input"]), float(entry["output"]))
        except (TypeError, KeyError, ValueError):
            raise InputError("prices", f"{path}: {model}: expected {{input: <$ per 1K tokens>, output: <$ per 1K "
                             f"tokens>}}, got {entry!r}") from None
        if price.input < 0 or price.output < 0:
            raise InputError("prices", f"{path}: {model}: prices must be >= 0")
        prices[str(model)] = price
    return prices
