"""``BuildTableConfig`` and ``BenchSamplersConfig``: what ``lmtune bench build-table`` and ``bench samplers`` take."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from lmtune.runtime.storage import StudyName
from lmtune.samplers.registry import AGENT_OVERRIDE_SHARE, REGISTRY, SAMPLERS

#: The agent's methods and the mode each replays (``agent`` is the default mode, centaur).
AGENT_METHODS = {"agent": "centaur", "agent-lead": "lead"}
#: Methods ``bench samplers`` replays: lmtune's samplers, the agent's lead mode, NOMAD (PyNomadBBO) and the
#: language-BO ablations.
METHODS = (*SAMPLERS, "agent-lead", "nomad", *(name for name in REGISTRY if name not in SAMPLERS))


class BuildTableConfig(BaseModel):
    """Everything ``lmtune bench build-table`` takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    table: str = Field("bbc-minilm", description="which table to build: bbc-minilm, arith-sft, arith-mul, "
                       "arith-variants or bbc-minilm-l2",
                       json_schema_extra={"metavar": "NAME"})
    output: Path | None = Field(None, description="table file (.json.gz); rows already in it are not trained again "
                                "(default: benchmarks/data/<table>.json.gz)", json_schema_extra={"metavar": "FILE"})
    storage: str = Field("sqlite:///lmtune-bench.db", description="Optuna storage of the build study; share it "
                         "between processes or machines to build together", json_schema_extra={"metavar": "URL"})
    study_name: StudyName | None = Field(None, description="build study name (default: the table name)",
                                   json_schema_extra={"metavar": "NAME"})
    max_trials: int | None = Field(None, ge=1, description="stop after this many configs (default: the whole grid)")
    full_runs: int = Field(0, ge=0, description="then train this many configs, spread over the quality range, on "
                           "the whole training split (needs the whole grid)")
    threads: int = Field(1, ge=1, description="torch CPU threads per process")


class BenchSamplersConfig(BaseModel):
    """Everything ``lmtune bench samplers`` takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    table: list[Path] = Field(description="table file(s) to replay against; repeat for several",
                              json_schema_extra={"metavar": "FILE"})
    samplers: list[str] = Field(["auto", "random", "tpe", "gp", "botorch", "nomad", "language-bo"],
                                description="methods, comma-separated: " + ", ".join(METHODS),
                                json_schema_extra={"split": ",", "metavar": "NAME,NAME..."})
    budget: int = Field(30, ge=1, le=10_000, description="trials per search (at most 10,000)")
    seeds: int = Field(20, ge=1, le=1_000, description="searches per method (seeds 0..N-1; at most 1,000)")
    output: Path = Field(Path("benchmarks/results/samplers"), description="folder for runs.jsonl and "
                         "samplers.md/.json/.png")
    threads: int = Field(1, ge=1, description="torch CPU threads for the model-based samplers")
    jobs: int = Field(1, ge=1, description="replays run in this many processes at once (each with --threads)")
    transfer_from: list[Path] = Field([], description="more table files whose rows language-bo+ remembers, besides "
                                      "the other --table files (a table is never its own memory)",
                                      json_schema_extra={"metavar": "FILE"})
    endpoint: str | None = Field(None, description="agent: base URL of an OpenAI-compatible server (Ollama: "
                                 "http://127.0.0.1:11434/v1)", json_schema_extra={"metavar": "URL"})
    agent_model: str | None = Field(None, description="agent: the model the endpoint serves",
                                    json_schema_extra={"metavar": "NAME"})
    agent_prompts: str | None = Field(None, description="agent: folder of prompt templates replacing the built-in "
                                      "ones", json_schema_extra={"metavar": "DIR"})
    agent_temperature: float = Field(0.0, ge=0.0, le=2.0, allow_inf_nan=False, description="agent: sampling "
                                     "temperature (each call is seeded)")
    agent_analyzer_tokens: int = Field(256, ge=1, description="agent: longest diagnosis of the Analyzer, in tokens")
    agent_reason_chars: int = Field(240, ge=0, description="agent: longest reason the Optimizer writes before its "
                                    "config (0: none, only for agent-lead)")
    agent_override_share: float = Field(AGENT_OVERRIDE_SHARE, ge=0.0, le=1.0, allow_inf_nan=False,
                                        description="agent (centaur): the most trials, as a share of "
                                        "the trials so far, whose config the model may set")

    @property
    def agent_options(self) -> dict:
        return {"endpoint": self.endpoint, "model": self.agent_model, "prompts": self.agent_prompts,
                "temperature": self.agent_temperature,
                "analyzer_tokens": self.agent_analyzer_tokens, "reason_chars": self.agent_reason_chars,
                "override_share": self.agent_override_share}
