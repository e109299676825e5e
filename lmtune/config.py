"""Run configs: one pydantic model per command, loadable from YAML, with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmtune.errors import InputError


class LoraRunConfig(BaseModel):
    """Everything ``lmtune lora`` needs; the same fields work as CLI flags and in ``--config run.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(None, description="HF model id or folder; default: the offline MiniLM encoder")
    dataset: str | None = Field(None, description="'bbc-news' (default), CSV/JSONL file or folder, or HF id")
    task: Literal["classification", "causal"] | None = Field(None, description="inferred from the data if not given")
    space: str = Field("lora-small", description="preset name (lora-small, lora-paper) or a YAML file")
    variant: str | None = Field(None, description="lora, rslora, dora, pissa, or 'search' for all")
    trials: int = Field(10, ge=1, description="number of finished trials the study should hold")
    proxy_fraction: float = Field(0.1, gt=0.0, le=1.0, description="fraction of the training split used per trial")
    sampler: str = Field("tpe", description="random, tpe, gp, botorch or language-bo")
    startup_trials: int = Field(5, ge=0, description="random trials before a model-based sampler takes over")
    pruner: str = Field("none", description="none, median or hyperband")
    template: str = Field("domain", description="language-bo: domain, plain, or a template file")
    encoder: str | None = Field(None, description="language-bo: HF model id or folder; default the offline MiniLM")
    projection: bool = Field(True, description="language-bo: learnable projection (off = Table 6 ablation)")
    learnable_token: bool = Field(True, description="language-bo: learnable soft token (off = Table 6 ablation)")
    shortlist_k: int = Field(16, ge=1, description="language-bo: candidates re-embedded exactly per suggestion")
    seed: int = 0
    storage: str | None = Field(None, description="sqlite:///FILE (default sqlite:///lmtune.db), "
                                "postgresql+psycopg://USER:PASSWORD@HOST/DB or journal:///FILE")
    study_name: str = "lmtune-lora"
    heartbeat_interval: int = Field(30, ge=1, description="seconds between heartbeats of a running trial (RDB storage)")
    grace_period: int = Field(120, ge=2, description="seconds without a heartbeat before a trial is failed and retried")
    run: bool = Field(True, description="run trials here; false only creates the study for `lmtune worker`")
    output_dir: Path | None = Field(None, description="default: lmtune-out/<study_name>")
    max_length: int = Field(128, ge=8, description="tokens per example")
    epochs: float = Field(1.0, gt=0.0)
    target_modules: list[str] | None = Field(None, description="modules to adapt; default: PEFT's for the model type")
    final_train: bool = Field(True, description="retrain the best config on the full training split and test it")

    @property
    def language_bo_options(self) -> dict[str, Any]:
        return {"template": self.template, "encoder": self.encoder, "use_projection": self.projection,
                "use_learnable_token": self.learnable_token, "shortlist_k": self.shortlist_k}

    @property
    def sampler_options(self) -> dict[str, Any]:
        """Keyword arguments of ``make_sampler`` for this run (its name and space aside)."""
        options = {"seed": self.seed, "n_startup_trials": self.startup_trials}
        return {**options, **(self.language_bo_options if self.sampler == "language-bo" else {})}

    @property
    def out_dir(self) -> Path:
        return self.output_dir or Path("lmtune-out") / self.study_name


def build_config(cls: type[BaseModel], config_file: Path | None = None, **overrides: Any) -> Any:
    """Fields from ``config_file`` (YAML), then non-None ``overrides``; errors name the field."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(load_yaml_mapping(config_file, field="config"))
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls(**values)
    except ValidationError as exc:
        raise validation_to_input_error(exc, cls) from None


def load_yaml_mapping(path: Path, *, field: str) -> dict[str, Any]:
    if not Path(path).is_file():
        raise InputError(field, f"file {path} does not exist")
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise InputError(field, f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise InputError(field, f"{path} must hold a mapping of field: value")
    return data


def validation_to_input_error(exc: ValidationError, cls: type[BaseModel]) -> InputError:
    """The first pydantic error as an InputError naming the field."""
    err = exc.errors()[0]
    field = ".".join(str(part) for part in err["loc"]) or "config"
    if err["type"] == "extra_forbidden":
        return InputError(field, f"is not a known field; allowed: {', '.join(cls.model_fields)}")
    return InputError(field, f"{err['msg']} (got {err.get('input')!r})")
