"""The inference search space: model, temperature or top_p, max_tokens, n, prompt template and stop.

A config's ``token_key`` (model, template, stop) names everything that decides how many tokens it uses
besides n and max_tokens, so pruning knowledge is never shared between configs that bill differently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import optuna

from lmtune.errors import InputError
from lmtune.inference.prices import PriceTable


@dataclass(frozen=True)
class InferenceConfig:
    model: str
    template: int
    stop: int
    max_tokens: int
    n: int
    temperature: float | None = None
    top_p: float | None = None

    @property
    def token_key(self) -> str:
        return f"{self.model}|template={self.template}|stop={self.stop}"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class InferenceSpace:
    models: list[str]
    templates: int = 1
    stops: int = 1
    sampling: str = "temperature"  # or "top_p": one of the two is searched, the other left at its default
    temperature: tuple[float, float] = (0.0, 2.0)
    top_p: tuple[float, float] = (0.0, 1.0)
    max_tokens: tuple[int, int] = (16, 512)
    n: tuple[int, int] = (1, 16)

    @property
    def sampling_range(self) -> tuple[float, float]:
        """The searched range of whichever of temperature and top_p is searched."""
        return self.temperature if self.sampling == "temperature" else self.top_p

    def __post_init__(self):
        if not self.models:
            raise InputError("models", "name at least one model")
        if self.sampling not in ("temperature", "top_p"):
            raise InputError("sampling", f"must be temperature or top_p, got {self.sampling!r}")
        for name, low_min in (("max_tokens", 1), ("n", 1)):
            low, high = getattr(self, name)
            if not low_min <= low <= high:
                raise InputError(name, f"need {low_min} <= low <= high, got {low}..{high}")
        low, high = self.sampling_range
        top = 2.0 if self.sampling == "temperature" else 1.0
        if not 0.0 <= low <= high <= top:
            raise InputError(self.sampling, f"need 0 <= low <= high <= {top}, got {low}..{high}")

    def suggest(self, trial: optuna.Trial) -> InferenceConfig:
        model = trial.suggest_categorical("model", self.models)
        template = trial.suggest_categorical("template", list(range(self.templates)))
        stop = trial.suggest_categorical("stop", list(range(self.stops)))
        low, high = self.sampling_range
        value = trial.suggest_float(self.sampling, low, high)
        max_tokens = trial.suggest_int("max_tokens", *self.max_tokens, log=True)
        n = trial.suggest_int("n", *self.n, log=True)
        return InferenceConfig(model, template, stop, max_tokens, n, **{self.sampling: value})

    def low_cost_params(self, prices: PriceTable) -> dict:
        """The cheapest corner: cheapest model, n and max_tokens at their lows, the API's default sampling."""
        cheapest = min(self.models, key=lambda m: (prices[m].output, prices[m].input))
        low, high = self.sampling_range
        return {"model": cheapest, "template": 0, "stop": 0, self.sampling: min(max(1.0, low), high),
                "max_tokens": self.max_tokens[0], "n": self.n[0]}

    def describe(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
