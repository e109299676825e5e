"""The request bodies ``lmtune serve`` accepts, as pydantic models: every field OpenAI's completion and chat APIs
define that the server honours (plus vLLM's ``top_k`` and ``repetition_penalty``), with OpenAI's ranges.

A body that breaks them is answered HTTP 400 naming the field, before any token is decoded: a message without a
role, ``stop: [1, 2]``, an empty prompt, a temperature of NaN or 1e308, ``n = 2.7`` were HTTP 500 or, worse,
HTTP 200 with whatever the sampler made of them. Fields the server does not use (``user``, ``logprobs``, ...) are
ignored, as OpenAI-compatible servers do, so any client's defaults pass.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmtune.llm.generation import GenerationRequest

#: Most completions one request may ask for, and most tokens per completion.
MAX_N = 128
MAX_TOKENS = 4096
#: Most stop strings (OpenAI allows 4) and their longest length.
MAX_STOPS, MAX_STOP_CHARS = 16, 256
#: The largest seed: OpenAI's seeds are 64-bit signed integers.
MAX_SEED = 2**63 - 1

class Sampling(BaseModel):
    """What completion and chat requests share."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model: str
    n: int = Field(1, ge=1, le=MAX_N)
    max_tokens: int = Field(16, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    stop: list[str] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    response_format: dict[str, Any] | None = None
    top_k: int | None = Field(None, ge=-1)  # vLLM: -1 is no cut
    repetition_penalty: float | None = Field(None, gt=0, le=100, allow_inf_nan=False)
    stream: Literal[False] = False  # every reply comes whole

    @field_validator("stop", mode="before")
    @classmethod
    def _stops(cls, value: Any) -> list[str] | None:
        """A string or a list of strings, as OpenAI takes it; read as a list."""
        stops = [value] if isinstance(value, str) else value
        if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops)):
            raise ValueError(f"must be a non-empty string or a list of them, got {value!r}"[:200])
        if stops and (len(stops) > MAX_STOPS or max(map(len, stops)) > MAX_STOP_CHARS):
            raise ValueError(f"at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} characters")
        return stops

    def options(self) -> dict[str, Any]:
        return {"model": self.model, "n": self.n, "max_tokens": self.max_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "stop": tuple(self.stop) if self.stop else None, "seed": self.seed,
                "response_format": None if self.response_format is None else json.dumps(self.response_format),
                "top_k": None if self.top_k in (None, -1) else self.top_k,
                "repetition_penalty": self.repetition_penalty}


class CompletionBody(Sampling):
    """``POST /v1/completions``: one prompt (a string, or a list holding one string)."""

    prompt: str

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, value: Any) -> str:
        prompt = value[0] if isinstance(value, list) and len(value) == 1 else value
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"must be one non-empty string (or a list holding one), got {value!r}"[:200])
        return prompt

    def request(self) -> GenerationRequest:
        return GenerationRequest(prompt=self.prompt, **self.options())


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str


class ChatBody(Sampling):
    """``POST /v1/chat/completions``: one or more messages."""

    messages: list[Message] = Field(min_length=1)

    def request(self) -> GenerationRequest:
        return GenerationRequest(messages=tuple((m.role, m.content) for m in self.messages), **self.options())
