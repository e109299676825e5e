"""One interface for sampling n completions: a request, its completions with token usage, and the backends' base.

The tuner only ever sees ``Generator.generate(request) -> Generation``; whether the tokens come from an
OpenAI-compatible server or a local Hugging Face model, the token counts it bills come back the same way.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

#: Called before a backend makes another call for the same request; may raise to stop it.
ExtraCallHook = Callable[["GenerationRequest"], None]


class GenerationError(RuntimeError):
    """A request that failed for good (after retries): the trial that needed it is recorded as FAIL."""


@dataclass(frozen=True)
class GenerationRequest:
    """Everything that decides the completions; the response cache is keyed by all of it.

    ``prompt`` for a completion endpoint, or ``messages`` ((role, content), ...) for a chat endpoint.
    ``seed`` tells batches of one prompt apart, so asking for more samples later gives new ones.
    ``top_k`` (0: no cut) and ``repetition_penalty`` (1: none) are vLLM's and transformers' extensions of the
    OpenAI API; None leaves them to the backend and keeps them out of the cache key, so caches made before they
    existed still answer.
    """

    model: str
    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int = 16
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None

    def __post_init__(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a request has a prompt or messages, not both and not neither")
        if self.n < 1 or self.max_tokens < 1:
            raise ValueError(f"n and max_tokens must be >= 1, got n={self.n}, max_tokens={self.max_tokens}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: no cut), got {self.top_k}")
        if self.repetition_penalty is not None and not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    def key(self) -> dict:
        key = asdict(self)
        for name in ("top_k", "repetition_penalty"):
            if key[name] is None:
                del key[name]
        return key

    def text(self) -> str:
        """The prompt text (chat messages joined), for token estimates and local models without a chat template."""
        if self.prompt is not None:
            return self.prompt
        return "\n".join(content for _, content in self.messages or ())


@dataclass
class Generation:
    """``n`` completion texts and the tokens billed for them (prompt once per call, completions summed)."""

    texts: list[str]
    prompt_tokens: int
    completion_tokens: int
    finish_reasons: list[str] = field(default_factory=list)
    cached: bool = False
    #: The decoding hyperparameters a backend chose itself (two-stage generation), for the response.
    hyperparameters: dict | None = None


class Generator(ABC):
    """A backend that samples completions. ``backend_id`` names it in cache keys (URL or model folder)."""

    backend_id: str = ""

    @abstractmethod
    async def generate(self, request: GenerationRequest, *, before_extra_call: ExtraCallHook | None = None
                       ) -> Generation:
        """Sample ``request.n`` completions; raise ``GenerationError`` when it cannot.

        A backend that needs more than one call for one request (a server that ignores ``n``) calls
        ``before_extra_call(request)`` first, so the caller can reserve budget for the extra prompt.
        """

    def count_prompt_tokens(self, request: GenerationRequest) -> int | None:
        """The exact prompt tokens when the backend can count them before the call (local models), else None."""
        return None

    async def check(self) -> None:  # noqa: B027  (most backends have nothing to check)
        """Raise ``InputError`` when the backend cannot be used at all (unreachable server, missing model)."""

    async def aclose(self) -> None:  # noqa: B027
        """Release connections or memory."""


class BackgroundLoop:
    """One event loop in a daemon thread for a whole study.

    Optuna calls objectives synchronously; async clients (httpx under ``openai``) are bound to the loop that
    made them, so every trial submits its coroutines here instead of starting a new loop each time.
    """

    def __init__(self):
        import threading

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="lmtune-generation", daemon=True)
        self.thread.start()

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
