"""``ServeConfig``: what ``lmtune serve`` takes, apart from the server so that it reads without the ``serve`` extra."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ServeConfig(BaseModel):
    """Everything ``lmtune serve`` takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field("arith-lm", description="local HF causal LM folder, or arith-lm",
                       json_schema_extra={"metavar": "PATH"})
    host: str = Field("127.0.0.1", description="address to listen on", json_schema_extra={"metavar": "HOST"})
    port: int = Field(8000, ge=1, le=65535, description="port", json_schema_extra={"metavar": "PORT"})
    device: str = Field("cpu", description="torch device (cpu, cuda, cuda:1, mps)",
                        json_schema_extra={"metavar": "DEVICE"})
