"""One interface for sampling n completions: a request, its completions with token usage, and the backends' base.

The tuner only ever sees ``Generator.generate(request) -> Generation``; whether the tokens come from an
OpenAI-compatible server or a local Hugging Face model, the token counts it bills come back the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

#: The sampling hyperparameters of a request, each with the value a backend uses when the request leaves it out
#: (None): the OpenAI API's temperature and top_p, no top-k cut, no repetition penalty. ``lmtune infer`` searches
#: some of them for a whole task, leaving the rest out; ``lmtune hag`` chooses all four for each input.
SAMPLING_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}

#: Called before a backend makes another call for the same request, with how many completions that call may
#: bill beyond what the first call's reservation covers (0 when it only fills in choices a server left out;
#: the missing count when it retries a call that may have been billed); may raise to stop it.
ExtraCallHook = Callable[["GenerationRequest", int], None]


def stop_text(stop: list[str] | tuple[str, ...] | None) -> str:
    """A stop choice as one entry of ``stops`` is written (the inverse of ``parse_stop``): '|'-joined, escapes
    shown, 'none'."""
    return "|".join(s.encode("unicode_escape").decode() for s in stop) if stop else "none"


class GenerationError(RuntimeError):
    """A request that failed for good (after retries): the trial that needed it is recorded as FAIL.

    ``maybe_billed`` says whether a call may have been billed all the same (the server answered something
    unusable, or the answer did not come in time): the caller then counts its worst case instead of nothing.
    """

    def __init__(self, message: str, *, maybe_billed: bool = False):
        super().__init__(message)
        self.maybe_billed = maybe_billed


@dataclass(frozen=True)
class GenerationRequest:
    """Everything that decides the completions; the response cache is keyed by all of it.

    ``prompt`` for a completion endpoint, or ``messages`` ((role, content), ...) for a chat endpoint.
    ``seed`` tells batches of one prompt apart, so asking for more samples later gives new ones.
    ``response_format`` is OpenAI's ``response_format`` object as JSON text (text keeps the request hashable),
    e.g. ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}``; None asks for free text.
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
    response_format: str | None = None
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

        A backend that needs more than one call for one request (a server that ignores ``n``, a retry after a
        call that may have been billed) calls ``before_extra_call(request, completions)`` first, so the caller
        can reserve budget for it.
        """

    def count_prompt_tokens(self, request: GenerationRequest) -> int | None:
        """The exact prompt tokens when the backend can count them before the call (local models), else None."""
        return None

    async def check(self) -> None:  # noqa: B027  (most backends have nothing to check)
        """Raise ``InputError`` when the backend cannot be used at all (unreachable server, missing model)."""

    async def aclose(self) -> None:  # noqa: B027
        """Release connections or memory."""


class Stopped(RuntimeError):
    """No new call is made: the run is being interrupted (``BackgroundLoop.stopping``)."""


class BackgroundLoop:
    """One event loop in a daemon thread for a whole study.

    Optuna calls objectives synchronously; async clients (httpx under ``openai``) are bound to the loop that
    made them, so every trial submits its coroutines here instead of starting a new loop each time.

    When the waiting thread is interrupted (Ctrl-C, or SIGTERM turned into one), ``stopping`` is set, so callers
    that watch it (``MeteredGenerator``) start no new call, and the calls in flight get ``drain`` seconds to
    finish: they were paid for, so their replies are better recorded than thrown away. Then what is left is
    cancelled and its cleanup (calls given up in the spend journal, connections closed) runs before the
    interrupt goes on. A second interrupt skips the wait. ``close`` cancels whatever is left, so no task is
    destroyed while pending.
    """

    #: Seconds a cancelled coroutine gets to clean up before the interrupt goes on regardless.
    CANCEL_GRACE = 10.0

    def __init__(self, drain: float = 10.0):
        import threading

        self.drain = drain
        self.stopping = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="lmtune-generation", daemon=True)
        self.thread.start()

    def run(self, coroutine):
        import concurrent.futures

        outcome: concurrent.futures.Future = concurrent.futures.Future()
        tasks: list[asyncio.Task] = []

        def finish(task: asyncio.Task) -> None:
            if task.cancelled():
                outcome.set_exception(asyncio.CancelledError())
            elif task.exception() is not None:
                outcome.set_exception(task.exception())
            else:
                outcome.set_result(task.result())

        def start() -> None:
            tasks.append(self.loop.create_task(coroutine))
            tasks[0].add_done_callback(finish)

        self.stopping.clear()
        self.loop.call_soon_threadsafe(start)
        try:
            return outcome.result()
        except BaseException:
            if not outcome.done():  # interrupted while waiting
                self.stopping.set()  # no new calls; those in flight may finish and be recorded
                with contextlib.suppress(BaseException):  # interrupted again: stop waiting
                    concurrent.futures.wait([outcome], timeout=self.drain)
            if not outcome.done():  # cancel, and let the cleanup run first
                self.loop.call_soon_threadsafe(lambda: [task.cancel() for task in tasks])
                concurrent.futures.wait([outcome], timeout=self.CANCEL_GRACE)
            raise

    def close(self) -> None:
        if not self.thread.is_alive():
            return

        async def cancel_the_rest():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(cancel_the_rest(), self.loop).result(self.CANCEL_GRACE)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
            if not self.thread.is_alive():
                self.loop.close()
