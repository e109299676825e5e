"""The inference search space: model, temperature or top_p (or both), max_tokens, n, prompt template and stop;
optionally top_k and repetition_penalty (vLLM's and transformers' extensions of the API).

An ``InferencePoint`` is one config of that space, the same for every instance of the task. Its sampling
hyperparameters are those of a request (``SAMPLING_DEFAULTS``); one the space does not search stays None, so the
request leaves it out and the backend uses its own default (top_k and repetition_penalty are not OpenAI's fields).
``lmtune hag``'s ``Decoding`` holds the same four with those defaults filled in, since it sends all four; the two
stay apart because a hyperparameter is optional in one and not in the other.

A config's ``token_key`` (model, template, stop) names everything that decides how many tokens it uses
besides n and max_tokens, so pruning knowledge is never shared between configs that bill differently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import optuna

from lmtune.errors import InputError
from lmtune.inference.prices import PriceTable
from lmtune.llm.generation import SAMPLING_DEFAULTS


@dataclass(frozen=True)
class InferencePoint:
    """One config of an ``InferenceSpace``: template and stop are indices into the task's choices."""

    model: str
    template: int
    stop: int
    max_tokens: int
    n: int
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None

    @property
    def token_key(self) -> str:
        return f"{self.model}|template={self.template}|stop={self.stop}"

    def as_dict(self) -> dict:
        return asdict(self)

    def sampling(self) -> dict[str, float | int | None]:
        """The request's sampling hyperparameters (None: left to the backend)."""
        return {name: getattr(self, name) for name in SAMPLING_DEFAULTS}


@dataclass
class InferenceSpace:
    models: list[str]
    templates: int = 1
    stops: int = 1
    sampling: str = "temperature"  # or "top_p": one of the two is searched, the other left at its default; or "both"
    temperature: tuple[float, float] = (0.0, 2.0)
    top_p: tuple[float, float] = (0.0, 1.0)
    max_tokens: tuple[int, int] = (16, 512)
    n: tuple[int, int] = (1, 16)
    top_k: tuple[int, ...] | None = None  # values searched (0: no cut); None: not searched
    repetition_penalty: tuple[float, float] | None = None

    @property
    def sampling_range(self) -> tuple[float, float]:
        """The searched range of whichever of temperature and top_p is searched (temperature's for both)."""
        return self.top_p if self.sampling == "top_p" else self.temperature

    @property
    def sampled(self) -> list[str]:
        """The sampling parameters searched."""
        return ["temperature", "top_p"] if self.sampling == "both" else [self.sampling]

    def __post_init__(self):
        if not self.models:
            raise InputError("models", "name at least one model")
        if self.sampling not in ("temperature", "top_p", "both"):
            raise InputError("sampling", f"must be temperature, top_p or both, got {self.sampling!r}")
        for name, low_min in (("max_tokens", 1), ("n", 1)):
            low, high = getattr(self, name)
            if not low_min <= low <= high:
                raise InputError(name, f"need {low_min} <= low <= high, got {low}..{high}")
        for name in self.sampled:
            low, high = getattr(self, name)
            top = 2.0 if name == "temperature" else 1.0
            if not 0.0 <= low <= high <= top:
                raise InputError(name, f"need 0 <= low <= high <= {top}, got {low}..{high}")
        if self.top_k is not None and (not self.top_k or min(self.top_k) < 0):
            raise InputError("top_k", f"give values >= 0 (0: no cut), got {list(self.top_k)}")
        if self.repetition_penalty is not None and not 0 < self.repetition_penalty[0] <= self.repetition_penalty[1]:
            raise InputError("repetition_penalty", f"need 0 < low <= high, got {self.repetition_penalty}")

    def suggest(self, trial: optuna.Trial) -> InferencePoint:
        model = trial.suggest_categorical("model", self.models)
        template = trial.suggest_categorical("template", list(range(self.templates)))
        stop = trial.suggest_categorical("stop", list(range(self.stops)))
        sampling = {name: trial.suggest_float(name, *getattr(self, name)) for name in self.sampled}
        if self.top_k is not None:
            sampling["top_k"] = trial.suggest_categorical("top_k", list(self.top_k))
        if self.repetition_penalty is not None:
            sampling["repetition_penalty"] = trial.suggest_float("repetition_penalty", *self.repetition_penalty)
        max_tokens = trial.suggest_int("max_tokens", *self.max_tokens, log=True)
        n = trial.suggest_int("n", *self.n, log=True)
        return InferencePoint(model, template, stop, max_tokens, n, **sampling)

    def low_cost_params(self, prices: PriceTable) -> dict:
        """The cheapest corner: cheapest model, n and max_tokens at their lows, the API's default sampling (clipped
        into the range searched)."""
        cheapest = min(self.models, key=lambda m: (prices[m].output, prices[m].input))
        params = {"model": cheapest, "template": 0, "stop": 0, "max_tokens": self.max_tokens[0], "n": self.n[0]}
        for name in self.sampled:
            low, high = getattr(self, name)
            params[name] = min(max(SAMPLING_DEFAULTS[name], low), high)
        if self.top_k is not None:  # no cut, or the loosest cut searched
            params["top_k"] = 0 if 0 in self.top_k else max(self.top_k)
        if self.repetition_penalty is not None:
            low, high = self.repetition_penalty
            params["repetition_penalty"] = min(max(SAMPLING_DEFAULTS["repetition_penalty"], low), high)
        return params

    def describe(self) -> dict:
        """The space as stored in a study; fields not searched are left out, so older studies still resume."""
        described = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        return {k: v for k, v in described.items() if v is not None or k not in ("top_k", "repetition_penalty")}
