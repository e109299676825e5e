"""``InferConfig``: everything ``lmtune infer`` takes, as flags or in Python; ranges read as ``LOW,HIGH``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from lmtune.runtime.storage import STORAGE_HELP, StudyName


def parse_range(value: Any, kind: type) -> tuple:
    """``"LOW,HIGH"`` (or one value, for a fixed one), or a pair, as a tuple of ``kind`` with LOW <= HIGH."""
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else list(value)
    try:
        values = tuple(kind(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"expected LOW,HIGH numbers, got {value!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or values[0] > values[1] or not all(math.isfinite(v) for v in values):
        raise ValueError(f"expected LOW,HIGH with LOW <= HIGH, got {value!r}")
    return values


def parse_stop(text: str) -> list[str]:
    """One stop choice: strings joined by '|' with escapes (``\\n``); 'none' for no stop."""
    if text.strip().lower() == "none":
        return []
    return [part.encode().decode("unicode_escape") for part in text.split("|") if part]


class InferConfig(BaseModel):
    """Everything ``lmtune infer`` takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inference_budget: float = Field(gt=0, allow_inf_nan=False, description="mean $ per instance the chosen config "
                                    "may cost", json_schema_extra={"metavar": "USD"})
    optimization_budget: float = Field(gt=0, allow_inf_nan=False, description="total $ the search may spend (never "
                                       "exceeded, even across kills)", json_schema_extra={"metavar": "USD"})
    task: str = Field("arith-add3", description="arith-add3, humaneval, or a JSONL file of {..., answer} lines",
                      json_schema_extra={"metavar": "TASK"})
    endpoint: str | None = Field(None, description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1",
                                 json_schema_extra={"metavar": "URL"})
    local_model: str | None = Field(None, description="local HF causal LM folder, or arith-lm",
                                    json_schema_extra={"metavar": "PATH"})
    device: str = Field("cpu", description="with `local_model`: torch device (cpu, cuda, ...)",
                        json_schema_extra={"metavar": "DEVICE"})
    models: list[str] = Field(default_factory=list, description="with `endpoint`: model names to search, "
                              "comma-separated", json_schema_extra={"split": ",", "metavar": "NAME,NAME..."})
    metric: str = Field("success", description="success, expected_success, vote, pass@K, or module:function",
                        json_schema_extra={"metavar": "METRIC"})
    templates: list[str] = Field(default_factory=list, description="prompt template (str.format fields of the "
                                 "task, escapes like \\n allowed); repeat to search several (default: the task's)",
                                 json_schema_extra={"flags": ["--template"], "metavar": "TEMPLATE"})
    stops: list[list[str]] = Field(default_factory=list, description="stop choice: strings joined by '|', "
                                   "escapes allowed, 'none' for none; repeat to search several (default: the "
                                   "task's)", json_schema_extra={"flags": ["--stop"], "metavar": "STOP"})
    sampling: Literal["temperature", "top_p", "both"] = Field("temperature", description="search temperature or "
                                                              "top_p (EcoOptiGen), or both")
    temperature: tuple[float, float] = Field((0.0, 2.0), description="range LOW,HIGH",
                                             json_schema_extra={"metavar": "LOW,HIGH"})
    top_p: tuple[float, float] = Field((0.0, 1.0), description="range LOW,HIGH",
                                       json_schema_extra={"metavar": "LOW,HIGH"})
    top_k: list[int] | None = Field(None, description="top_k values to search, comma-separated (0: no cut; "
                                    "default: not searched, the endpoint's default)",
                                    json_schema_extra={"split": ",", "metavar": "N,N..."})
    repetition_penalty: tuple[float, float] | None = Field(None, description="range LOW,HIGH to search "
                                                           "(default: not searched, the endpoint's default)",
                                                           json_schema_extra={"metavar": "LOW,HIGH"})
    max_tokens: tuple[int, int] | None = Field(None, description="range LOW,HIGH (log scale; default: the task's)",
                                               json_schema_extra={"metavar": "LOW,HIGH"})
    n: tuple[int, int] = Field((1, 16), description="responses per request, range LOW,HIGH (log scale)",
                               json_schema_extra={"metavar": "LOW,HIGH"})
    prices: str | None = Field(None, description="YAML of extra prices: model: {input: $/1K, output: $/1K}",
                               json_schema_extra={"metavar": "FILE"})
    task_size: int = Field(300, ge=1, le=100_000, description="arith-add3: problems generated (at most 100,000)")
    test_fraction: float = Field(0.4, gt=0, lt=1, allow_inf_nan=False,
                                 description="held-out test share of the task's instances")
    max_trials: int = Field(200, ge=1, description="stop after this many configs even if budget is left")
    pruning: bool = Field(True, description="cost-based pruning (EcoOptiGen)")
    track: list[str] = Field([], description="experiment trackers: mlflow, mlflow:TRACKING_URI, wandb or "
                             "wandb:PROJECT; each trial a run with its parameters, metrics at every evaluation and "
                             "state, results.json as an artifact of a final run (extra: track)",
                             json_schema_extra={"split": ",", "metavar": "TRACKER,..."})
    seed: int = Field(0, ge=0, lt=2**32, description="seed of the split, subsamples, sampler and sampling")
    storage: str | None = Field(None, description=STORAGE_HELP, json_schema_extra={"metavar": "URL"})
    study_name: StudyName | None = Field(None, description="study name (default infer-<task>); an existing study "
                                         "resumes", json_schema_extra={"metavar": "NAME"})
    output_dir: Path | None = Field(Path("lmtune-out/infer"), description="where results.json and the response "
                                    "cache go (none: no files)")
    cache: str | None = Field(None, description="response cache file (default OUTPUT_DIR/responses.sqlite); "
                              "'none' disables it", json_schema_extra={"metavar": "FILE"})
    concurrency: int = Field(8, ge=1, description="parallel requests to the endpoint")
    timeout: float = Field(60.0, gt=0, allow_inf_nan=False, description="seconds one request to the endpoint may "
                           "take; a request that takes longer fails (and counts as possibly billed)",
                           json_schema_extra={"metavar": "SECONDS"})
    retries: int = Field(5, ge=0, description="tries again after a rate limit, an HTTP 5xx answer or a dropped "
                         "connection, with exponential backoff")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the endpoint's API key",
                             json_schema_extra={"metavar": "NAME"})
    test_pareto: bool = Field(True, description="also evaluate every config of the cost/quality front on the test "
                              "split (each costs test spend)")

    @field_validator("temperature", "top_p", "repetition_penalty", mode="before")
    @classmethod
    def _float_range(cls, value: Any, info: ValidationInfo) -> tuple[float, float] | None:
        if value is None:
            return None
        low, high = parse_range(value, float)
        if info.field_name == "top_p" and (low < 0 or high > 1):
            raise ValueError("expected values within [0, 1]")
        if low < 0:
            raise ValueError("expected values >= 0")
        return low, high

    @field_validator("templates")
    @classmethod
    def _templates_say_something(cls, value: list[str]) -> list[str]:
        if any(not template.strip() for template in value):
            raise ValueError(f"a template must not be empty or only spaces, got {value!r}")
        return value

    @field_validator("max_tokens", "n", mode="before")
    @classmethod
    def _int_range(cls, value: Any) -> tuple[int, int] | None:
        if value is None:
            return None
        low, high = parse_range(value, int)
        if low < 1:
            raise ValueError("expected whole numbers >= 1")
        return low, high
