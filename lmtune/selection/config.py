"""``SelectConfig`` and ``BenchSelectConfig``: everything ``lmtune select`` and ``lmtune bench select`` take."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


def parse_ints(value: Any) -> list[int]:
    """'200,400,800' (or a list) as integers; at least one."""
    parts = [p for p in value.split(",") if p.strip()] if isinstance(value, str) else list(value)
    try:
        values = [int(p) for p in parts]
    except (TypeError, ValueError):
        raise ValueError(f"must be comma-separated integers, got {value!r}") from None
    if not values:
        raise ValueError("needs at least one value")
    return values


class SelectConfig(BaseModel):
    """Everything ``lmtune select`` takes: a curves file, or candidates to measure curves for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    curves: Path | None = Field(None, description="curves CSV (config name, 0, 200, ..., size)",
                                json_schema_extra={"metavar": "FILE"})
    models: list[str] = Field(default_factory=list, description="candidates to measure: `models` A B C",
                              json_schema_extra={"metavar": "ID"})
    dataset: str | None = Field(None, description="with `models`: bbc-news (default), CSV/JSONL, HF id",
                                json_schema_extra={"metavar": "DATA"})
    sizes: list[int] | None = Field(None, description="with `models`: subset sizes, e.g. 0,50,100,200",
                                    json_schema_extra={"split": ",", "metavar": "N,N..."})
    target_size: int | None = Field(None, ge=1, description="training size to predict (default: largest in the "
                                    "file; with `models`, the whole training split)")
    budget_ratio: float | None = Field(None, ge=1, allow_inf_nan=False,
                                       description="methods see sizes <= target/ratio (default 8 for `curves`; "
                                       "every measured size for `models`)")
    plot: Path | None = Field(None, description="PNG of points and fitted curves (default: <curves>-select.png in "
                              "the folder of `out`)",
                              json_schema_extra={"metavar": "FILE"})
    tokens_per_sample: float | None = Field(None, gt=0, allow_inf_nan=False, description="mean tokens per example, "
                                            "for FLOPs")
    out: Path = Field(Path("lmtune-out/select/curves.csv"), description="with `models`: the curves CSV to fill "
                      "(resumable)")
    mode: Literal["lora", "full"] = Field("lora", description="with `models`: LoRA or full fine-tuning")
    learning_rate: float | None = Field(None, gt=0, allow_inf_nan=False,
                                        description="with `models` (default 2e-4 lora, 5e-5 full)")
    batch_size: int = Field(16, ge=1, description="with `models`: training batch size")
    max_length: int = Field(128, ge=8, description="with `models`: tokens per example")
    epochs: float = Field(1.0, gt=0, allow_inf_nan=False, description="with `models`: epochs over each subset")
    ntk_examples: int = Field(8, ge=0, description="with `models`: examples for LENSLLM's NTK term (0: skip)")
    seed: int = Field(0, ge=0, lt=2**32, description="seed of the nested subsets and of training")

    @field_validator("sizes", mode="before")
    @classmethod
    def _sizes(cls, value: Any) -> list[int] | None:
        return None if value is None else parse_ints(value)


class BenchSelectConfig(BaseModel):
    """Everything ``lmtune bench select`` takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    curves: list[Path] = Field(description="curves CSV with the true losses at the target size; repeat for several "
                               "(`curves` A `curves` B)", json_schema_extra={"metavar": "FILE"})
    protocol: Literal["single", "lodo", "design"] = Field(
        "single", description="single: the paper table of each file; lodo: leave-one-dataset-out, each file scored "
        "by methods designed on the others (held-out scores only); design: the guard's setting chosen on all files")
    ratios: list[int] = Field([8, 16, 32, 64, 128, 256, 512], description="budget ratios, comma-separated",
                              json_schema_extra={"split": ",", "metavar": "N,N..."})
    as_json: bool = Field(False, description="one JSON object instead of Markdown",
                          json_schema_extra={"flags": ["--json"]})
    tokens_per_sample: float | None = Field(None, gt=0, allow_inf_nan=False, description="mean tokens per example, "
                                            "for FLOPs")
    target_size: int | None = Field(None, ge=1, description="training size to predict (default: the largest in the "
                                    "file)")

    @field_validator("ratios", mode="before")
    @classmethod
    def _ratios(cls, value: Any) -> list[int]:
        return parse_ints(value)

    @field_validator("curves", mode="before")
    @classmethod
    def _curves(cls, value: Any) -> list[Any]:
        return [value] if isinstance(value, str | Path) else value
