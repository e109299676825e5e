"""``LoraRunConfig``: everything ``lmtune lora`` takes, as flags, as fields of ``--config run.yaml``, or in Python."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from lmtune.finetune.hparams import VARIANTS
from lmtune.finetune.proxy import Proxy, ShareProxy, parse_proxy
from lmtune.runtime.storage import STORAGE_HELP, StudyName
from lmtune.samplers.registry import (
    AGENT_OVERRIDE_SHARE,
    DEFAULT_SAMPLER,
    PLUS_OPTIONS,
    PRUNERS,
    SAMPLERS,
    TRANSFER_SAMPLERS,
)

#: Config fields that belong to one process, not to the study a worker joins.
LOCAL_FIELDS = frozenset({"storage", "study_name", "output_dir", "trials", "run", "heartbeat_interval",
                          "grace_period", "final_train", "device", "track"})
#: What trials may be ranked by: the validation loss, or the task's metric (checked against the task later).
PROXY_METRICS = ("eval_loss", "accuracy", "exact_match")
#: ``memory``: every compatible earlier study of the storage, or nothing (``lmtune.lora.memory``).
AUTO_MEMORY, NO_MEMORY = "auto", "none"
#: Config fields that may name a local file or folder; a worker gets them as absolute paths.
PATH_FIELDS = ("model", "dataset", "space", "template", "encoder", "agent_prompts")


class LoraRunConfig(BaseModel):
    """Everything ``lmtune lora`` needs; the same fields work as CLI flags and in ``--config run.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(None, description="HF model id or folder (default: the offline MiniLM encoder)",
                              json_schema_extra={"metavar": "ID"})
    dataset: str | None = Field(None, description="bbc-news (default), CSV/JSONL file or folder, or HF dataset id",
                                json_schema_extra={"metavar": "DATA"})
    task: Literal["classification", "causal"] | None = Field(None, description="what to train (default: from the "
                                                                               "data's columns)")
    space: str | dict[str, Any] = Field("lora-small", description="preset (lora-small, lora-paper) or a YAML file "
                                        "(in a --config file also the space itself, as best.yaml holds it)",
                                        json_schema_extra={"metavar": "SPACE"})
    variant: str | None = Field(None, description="lora, rslora, dora, pissa, or 'search' for all four "
                                "(default: the space's)", json_schema_extra={"metavar": "VARIANT"})
    trials: int = Field(10, ge=1, description="finished trials the study should hold (with a budget: at most)")
    proxy: Proxy = Field(ShareProxy(), description="how long each trial trains: share, a share of each config's "
                         "own full run's optimizer steps, so every batch size sees as many examples (0.3, less on "
                         "data so large that a trial would pass 512 steps at the mean batch size); share:R, R of "
                         "it; steps:N, N steps whatever the batch size; epochs, the full run's epochs over the "
                         "`proxy_fraction` subset (lmtune's benchmark tables). A mapping in YAML and Python: "
                         "{kind: steps, steps: N}", json_schema_extra={"metavar": "KIND[:N]"})
    proxy_fraction: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False,
                                         description="share of the training split trials draw their batches from "
                                         "(default: all of it for a share, enough rows that no trial sees one "
                                         "twice for steps, 0.1 for epochs)", json_schema_extra={"metavar": "F"})
    proxy_metric: str | None = Field(None, description="what trials are ranked by: eval_loss, or the task's "
                                     "metric (accuracy; exact_match, which generates). Default: eval_loss, which "
                                     "moves while accuracy sits at chance; both are recorded",
                                     json_schema_extra={"metavar": "METRIC"})
    budget_steps: int | None = Field(None, ge=1, description="stop starting trials once a whole trial no longer "
                                     "fits in this many optimizer steps, all trials together",
                                     json_schema_extra={"metavar": "STEPS"})
    budget_seconds: float | None = Field(None, gt=0, allow_inf_nan=False,
                                         description="stop starting trials once a whole trial (its mean time so "
                                         "far) no longer fits in this many seconds of trials",
                                         json_schema_extra={"metavar": "SECONDS"})
    sampler: str = Field(DEFAULT_SAMPLER, description="auto, random, tpe, gp, botorch, language-bo, language-bo+ or "
                         "agent",
                         json_schema_extra={"metavar": "NAME"})
    startup_trials: int = Field(5, ge=0, description="random trials before a model-based sampler takes over")
    pruner: str = Field("none", description="none, median, successive-halving or hyperband: stop trials that "
                        "trail at a rung of training steps", json_schema_extra={"metavar": "NAME"})
    template: str = Field("domain", description="language-bo: domain, plain, or a template file",
                          json_schema_extra={"metavar": "TEMPLATE"})
    encoder: str | None = Field(None, description="language-bo: HF model id or folder (default: the offline "
                                "MiniLM)", json_schema_extra={"metavar": "ID"})
    projection: bool = Field(True, description="language-bo: learnable projection (off: Table 6 ablation)")
    learnable_token: bool = Field(True, description="language-bo: learnable soft token (off: Table 6 ablation)")
    shortlist_k: int = Field(16, ge=1, description="language-bo: candidates re-embedded exactly per suggestion")
    endpoint: str | None = Field(None, description="agent: base URL of an OpenAI-compatible server (Ollama: "
                                 "http://127.0.0.1:11434/v1)", json_schema_extra={"metavar": "URL"})
    agent_model: str | None = Field(None, description="agent: the model the endpoint serves (e.g. "
                                    "qwen2.5:7b-instruct)", json_schema_extra={"metavar": "NAME"})
    agent_prompts: str | None = Field(None, description="agent: folder of prompt templates replacing the built-in "
                                      "ones (system, analyzer, optimizer, retry, advisor .txt)",
                                      json_schema_extra={"metavar": "DIR"})
    agent_temperature: float = Field(0.0, ge=0.0, le=2.0, allow_inf_nan=False, description="agent: sampling "
                                     "temperature of the model's replies (each call is seeded)")
    agent_analyzer_tokens: int = Field(256, ge=1, description="agent: longest diagnosis of the Analyzer, in tokens")
    agent_reason_chars: int = Field(240, ge=0, description="agent: longest reason the Optimizer writes before its "
                                    "config (0: none, only in lead mode)")
    agent_mode: Literal["centaur", "lead"] = Field("centaur", description="agent: centaur, the default sampler "
                                                   "proposes every trial and the model may replace a bounded share "
                                                   "of its proposals; lead, the model proposes every trial")
    agent_override_share: float = Field(AGENT_OVERRIDE_SHARE, ge=0.0, le=1.0, allow_inf_nan=False,
                                        description="agent (centaur): the most trials, as a share of "
                                        "the study's trials so far, whose config the model may set")
    memory: list[str] = Field([AUTO_MEMORY], description="auto, language-bo+: earlier results known from the first "
                              "trial (they take no trial of its budget): auto, every earlier LoRA study in `storage` "
                              "with a compatible space and a few finished trials (never this one); none; or table "
                              "files and names of studies in `storage`. Other samplers remember nothing",
                              json_schema_extra={"split": ",", "metavar": "auto|none|STUDY_OR_TABLE,..."})
    track: list[str] = Field([], description="experiment trackers: mlflow, mlflow:TRACKING_URI, wandb or "
                             "wandb:PROJECT; each trial a run with its parameters, metrics at every evaluation and "
                             "state, the best adapter and results.json as artifacts of a final run (extra: track)",
                             json_schema_extra={"split": ",", "metavar": "TRACKER,..."})
    seed: int = Field(0, ge=0, lt=2**32, description="seed of data splits, proxy subset, sampler and training")
    storage: str | None = Field(None, description=STORAGE_HELP, json_schema_extra={"metavar": "URL"})
    study_name: StudyName = Field("lmtune-lora", min_length=1, description="study name; an existing study resumes",
                            json_schema_extra={"metavar": "NAME"})
    run: bool = Field(True, description="run trials here; off, it only creates the study for `lmtune worker`")
    heartbeat_interval: int = Field(30, ge=1, description="seconds between heartbeats of a running trial "
                                    "(SQLite/PostgreSQL)")
    grace_period: int = Field(120, ge=2, description="seconds without a heartbeat before a trial is failed and "
                              "retried once")
    output_dir: Path | None = Field(None, description="where results and the adapter go (default: "
                                    "lmtune-out/<study_name>)")
    max_length: int = Field(128, ge=8, description="tokens per example")
    epochs: float = Field(1.0, gt=0.0, allow_inf_nan=False, description="training epochs of the full run (and "
                          "of each trial with the epochs proxy)")
    target_modules: list[str] | None = Field(None, description="modules to adapt, comma-separated (default: "
                                             "PEFT's for the model type)",
                                             json_schema_extra={"split": ",", "metavar": "NAME,NAME..."})
    final_train: bool = Field(True, description="retrain the best config on the full training split and test it")
    device: str | None = Field(None, description="cpu, cuda, cuda:N or mps; also language-bo's encoder (default: "
                               "cuda when present, else cpu)", json_schema_extra={"metavar": "DEVICE"})
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on CUDA with bfloat16, else fp16 with loss scaling; fp32 elsewhere")
    quantize: Literal["none", "4bit"] = Field("none", description="4bit: QLoRA, an NF4 base through bitsandbytes "
                                              "(CUDA only)")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: less "
                                         "memory, one more forward pass of time")
    group_by_length: bool = Field(False, description="batch examples of similar length (less padding; seeded)")
    loss_on: Literal["assistant", "all"] = Field("assistant", description="causal data: the tokens that carry the "
                                                 "loss: the assistant's turns, the response or the completion "
                                                 "(assistant), or every token (all)")
    packing: bool = Field(False, description="causal data: several short examples per sequence, attention kept "
                          "within each (position ids restart per example)")
    max_micro_batch: int | None = Field(None, ge=1, description="most examples per forward pass: a larger batch is "
                                        "cut into micro-batches whose gradients add up to the batch's (the batch "
                                        "size stays the config's)", json_schema_extra={"metavar": "N"})
    compile: bool = Field(False, description="torch.compile each decoder layer, batch widths bucketed (pays off only "
                          "when trials outlast the compilation; docs/benchmarks.md)")

    @field_validator("proxy", mode="before")
    @classmethod
    def _proxy_from_text(cls, value: Any) -> Any:
        return parse_proxy(value) if isinstance(value, str) else value

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        return _one_of(value, SAMPLERS, "sampler")

    @field_validator("memory")
    @classmethod
    def _memory_for_a_sampler_that_remembers(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if not value or not all(name.strip() for name in value):
            raise ValueError(f"needs {AUTO_MEMORY}, {NO_MEMORY}, or table files and study names")
        if NO_MEMORY in value and len(value) > 1:
            raise ValueError(f"{NO_MEMORY} remembers nothing and stands alone; got {', '.join(value)}")
        sampler = info.data.get("sampler")
        if value not in ([AUTO_MEMORY], [NO_MEMORY]) and sampler not in TRANSFER_SAMPLERS:
            raise ValueError(f"sampler {sampler} remembers no earlier results; use `sampler` {TRANSFER_SAMPLERS[0]}, "
                             f"or leave `memory` {AUTO_MEMORY}")
        return value

    @field_validator("pruner")
    @classmethod
    def _known_pruner(cls, value: str) -> str:
        return _one_of(value, PRUNERS, "pruner")

    @field_validator("proxy_metric")
    @classmethod
    def _known_metric(cls, value: str | None) -> str | None:
        return value if value is None else _one_of(value, PROXY_METRICS, "metric")

    @field_validator("variant")
    @classmethod
    def _known_variant(cls, value: str | None) -> str | None:
        if value is not None and value not in (*VARIANTS, "search"):
            raise ValueError(f"{value!r} is not allowed; allowed: {', '.join(VARIANTS)}, search")
        return value

    @field_validator("target_modules")
    @classmethod
    def _named_modules(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not all(name.strip() for name in value)):
            raise ValueError("needs one or more module names")
        return value

    @property
    def language_bo_options(self) -> dict[str, Any]:
        from lmtune.finetune.device import resolve_device  # imports torch: only when a sampler is made

        return {"template": self.template, "encoder": self.encoder, "use_projection": self.projection,
                "use_learnable_token": self.learnable_token, "shortlist_k": self.shortlist_k,
                "device": str(resolve_device(self.device))}

    @property
    def agent_options(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "model": self.agent_model, "prompts": self.agent_prompts,
                "temperature": self.agent_temperature,
                "analyzer_tokens": self.agent_analyzer_tokens, "reason_chars": self.agent_reason_chars,
                "mode": self.agent_mode, "override_share": self.agent_override_share}

    @property
    def sampler_options(self) -> dict[str, Any]:
        """Keyword arguments of ``make_sampler`` for this run (its name and space aside; ``language-bo+``'s
        memory and description are added by ``lmtune.lora.search``)."""
        options = {"seed": self.seed, "n_startup_trials": self.startup_trials}
        if self.sampler in PLUS_OPTIONS:  # its own settings of the token and projection (registry)
            return {**options, "template": self.template, "encoder": self.encoder, "shortlist_k": self.shortlist_k}
        extra = {"language-bo": self.language_bo_options, "agent": self.agent_options}.get(self.sampler, {})
        return {**options, **extra}

    @property
    def out_dir(self) -> Path:
        return self.output_dir or Path("lmtune-out") / self.study_name


def _one_of(value: str, allowed, what: str) -> str:
    """``value`` when it is one of ``allowed``; else the one error every name field gives."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(allowed)}")
    return value
