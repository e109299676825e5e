"""The configs of ``lmtune hag label``, ``lmtune hag train`` and ``lmtune hag evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmtune.runtime.storage import STORAGE_HELP, StudyName

GRID_HELP = "values the label search may choose, comma-separated, in order"
GLOBAL_HELP = ("results.json of lmtune hag global (or of lmtune infer on the labels' task and metric): the config "
               "for all inputs")
CACHE_HELP = "response cache file (default OUTPUT_DIR/responses.sqlite); 'none' disables it"


class TaskFields(BaseModel):
    """What defines the task and how its inputs are split; ``label`` takes them, the other commands read them
    from the label file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str = Field("hag-mix", description="hag-mix, hag-spread, or a JSONL file of instances (fields of the "
                      "template)", json_schema_extra={"metavar": "TASK"})
    metric: str | None = Field(None, description="module:function(instance, responses) -> float, or exact, vote, "
                               "all, mix, spread (default: the task's own)", json_schema_extra={"metavar": "METRIC"})
    template: str | None = Field(None, description="prompt template, str.format fields of an instance "
                                 "(default {prompt})", json_schema_extra={"metavar": "TEMPLATE"})
    task_size: int = Field(600, ge=3, le=100_000, description="hag-mix, hag-spread: instances generated (at most "
                           "100,000)")
    n: int = Field(8, ge=1, description="responses per request; the metric scores them together")
    max_tokens: int = Field(16, ge=1, description="tokens per response at most")
    validation_fraction: float = Field(0.2, gt=0, lt=1, description="share of instances in the validation split")
    test_fraction: float = Field(0.3, gt=0, lt=1, description="share of instances in the held-out test split")
    seed: int = Field(0, ge=0, lt=2**32, description="seed of the task, the split and the sampling")

    @field_validator("template")
    @classmethod
    def _template_says_something(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError(f"a template must not be empty or only spaces, got {value!r}")
        return value


class HagLabelConfig(TaskFields):
    """Everything ``lmtune hag label`` takes."""

    model: str = Field("hag-lm", description="local HF causal LM folder, or hag-lm / arith-lm",
                       json_schema_extra={"metavar": "PATH"})
    split: Literal["train", "validation", "test"] = Field("train", description="which split to label")
    limit: int | None = Field(None, ge=1, description="label only the first N inputs of the split")
    temperature_grid: list[float] = Field([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0], description=GRID_HELP,
                                          json_schema_extra={"split": ",", "metavar": "X,X..."})
    top_p_grid: list[float] = Field([0.5, 0.7, 0.8, 0.9, 0.95, 1.0], description=GRID_HELP,
                                    json_schema_extra={"split": ",", "metavar": "X,X..."})
    top_k_grid: list[int] = Field([2, 4, 8, 16, 32, 0], description=GRID_HELP + " (0: no cut)",
                                  json_schema_extra={"split": ",", "metavar": "N,N..."})
    repetition_penalty_grid: list[float] = Field([1.0, 1.1, 1.2, 1.35, 1.5, 1.75, 2.0], description=GRID_HELP,
                                                 json_schema_extra={"split": ",", "metavar": "X,X..."})
    coarse_repeats: int = Field(1, ge=1, description="requests per coarse config")
    repeats: int = Field(3, ge=1, description="requests per config that survives pruning or refines")
    keep: float = Field(0.25, gt=0, le=1, description="share of coarse configs kept; the rest are dominated")
    max_configs: int = Field(60, ge=2, description="configs scored per input at most")
    tie_tolerance: float = Field(0.0, ge=0, description="scores this close to the best tie; the least random wins")
    chunk_size: int = Field(16, ge=1, description="inputs searched together in one trial (one batch)")
    storage: str | None = Field(None, description=STORAGE_HELP, json_schema_extra={"metavar": "URL"})
    study_name: StudyName | None = Field(None, description="study name (default hag-label-<task>-<split>); an existing "
                                   "study resumes", json_schema_extra={"metavar": "NAME"})
    output_dir: Path = Field(Path("lmtune-out/hag"), description="where labels-<split>.jsonl and the response "
                             "cache go")
    cache: str | None = Field(None, description=CACHE_HELP, json_schema_extra={"metavar": "FILE"})
    device: str = Field("cpu", description="torch device", json_schema_extra={"metavar": "DEVICE"})


class HagGlobalConfig(BaseModel):
    """Everything ``lmtune hag global`` takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: Path = Field(description="training labels (lmtune hag label on the train split): the task, metric, "
                         "model and inputs to tune on", json_schema_extra={"metavar": "FILE"})
    budget_tokens: int | None = Field(None, ge=1, description="tokens the search may generate and read (default: "
                                      "what labelling those inputs cost, from label-<split>.json beside the labels)")
    max_trials: int = Field(200, ge=1, description="stop after this many configs even if budget is left")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="share of the inputs held out to test the best config")
    storage: str | None = Field(None, description=STORAGE_HELP, json_schema_extra={"metavar": "URL"})
    study_name: str | None = Field(None, description="study name (default hag-global-<task>); an existing study "
                                   "resumes", json_schema_extra={"metavar": "NAME"})
    output_dir: Path = Field(Path("lmtune-out/hag/global"), description="where results.json, the inputs and the "
                             "price table go")
    cache: str | None = Field(None, description=CACHE_HELP, json_schema_extra={"metavar": "FILE"})
    seed: int = Field(0, ge=0, lt=2**32, description="seed of the search")
    device: str = Field("cpu", description="torch device", json_schema_extra={"metavar": "DEVICE"})


class HagTrainConfig(BaseModel):
    """Everything ``lmtune hag train`` takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: Path = Field(description="training labels (those of `lmtune hag label` on the train split)",
                         json_schema_extra={"metavar": "FILE"})
    output: Path = Field(description="the HAG model folder to write (hag.json and the adapter or head)",
                         json_schema_extra={"metavar": "DIR"})
    learner: Literal["adapter", "head", "neighbours"] = Field(
        "neighbours", description="adapter: LoRA instruction tuning, the model emits its hyperparameters (HAG); "
        "head: a small network that predicts each candidate config's margin over the global config from the frozen "
        "model's hidden states; neighbours: the mean margins of the most similar training inputs")
    global_config: Path | None = Field(None, description=GLOBAL_HELP + "; head and neighbours learn margins over it "
                                       "and fall back to it, the adapter when a reply cannot be read (default: the "
                                       "API default decoding)", json_schema_extra={"metavar": "FILE"})
    validation_labels: Path | None = Field(None, description="labels of the validation split: the guard's margin is "
                                           "calibrated on them (and on out-of-fold training inputs)",
                                           json_schema_extra={"metavar": "FILE"})
    instruction: str = Field("{input}\nhyperparameters:", description="the stage-1 prompt; {input} is the "
                             "stage-2 prompt", json_schema_extra={"metavar": "TEMPLATE"})
    rank: int = Field(8, ge=1, description="adapter: LoRA rank")
    alpha: float = Field(16.0, gt=0, description="adapter: LoRA alpha")
    learning_rate: float = Field(3e-3, gt=0, description="learning rate")
    epochs: float = Field(20.0, gt=0, description="passes over the training labels")
    batch_size: int = Field(16, ge=1, description="adapter: batch size")
    min_steps: int = Field(400, ge=1, description="adapter: optimizer steps at least, passing over the labels "
                           "again if epochs would give fewer")
    head_hidden: int = Field(64, ge=0, description="head: hidden units (0: linear)")
    pooling: Literal["mean", "last", "last+mean"] = Field("mean", description="head, neighbours: the input's "
                                                          "feature, the final hidden states averaged over its "
                                                          "tokens, at its last token, or both")
    neighbours: int = Field(10, ge=1, description="neighbours: training inputs averaged")
    cache: str | None = Field(None, description="response cache of the measurements the guard needs (default: "
                              "responses.sqlite beside the labels, the label search's); 'none' disables it",
                              json_schema_extra={"metavar": "FILE"})
    seed: int = Field(0, ge=0, lt=2**32, description="seed of the learner")
    device: str = Field("cpu", description="torch device", json_schema_extra={"metavar": "DEVICE"})


class HagEvaluateConfig(BaseModel):
    """Everything ``lmtune hag evaluate`` takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: Path = Field(description="labels of the held-out inputs (those of `lmtune hag label` on the test "
                         "split): the inputs and the per-input oracle", json_schema_extra={"metavar": "FILE"})
    learners: list[Path] = Field(default_factory=list, description="HAG model folders (lmtune hag train), "
                                 "comma-separated; folders of one learner kind count as seeds",
                                 json_schema_extra={"split": ",", "metavar": "DIR,DIR..."})
    global_config: Path | None = Field(None, description=GLOBAL_HELP, json_schema_extra={"metavar": "FILE"})
    random_seeds: int = Field(3, ge=0, description="seeds of random per-input configs")
    repeats: int = Field(4, ge=1, description="fresh requests per input and method")
    limit: int | None = Field(None, ge=1, description="evaluate only the first N labelled inputs")
    output_dir: Path = Field(Path("lmtune-out/hag"), description="where evaluation.json and evaluation.md go")
    cache: str | None = Field(None, description=CACHE_HELP, json_schema_extra={"metavar": "FILE"})
    seed: int = Field(0, ge=0, lt=2**32, description="seed of the fresh requests and the random configs")
    device: str = Field("cpu", description="torch device", json_schema_extra={"metavar": "DEVICE"})
