"""Any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server, ``transformers serve``, ``lmtune serve``)
through the official ``openai`` client.

What the client does not do for a tuner, this does: a concurrency limit, retries with exponential backoff and
jitter on rate limits, dropped connections and 5xx answers (and nothing else: a bad request fails at once), a
deadline per request (a request that passes it fails, and is not retried: it may have been billed, and a server
that slow is found out in one timeout rather than six), more calls when a server returns fewer than ``n``
choices (Ollama and ``transformers serve`` ignore ``n``), and a clear error when the server cannot be reached.

The client checks nothing of what a server answers (an HTML page or a list comes back as a string or a list),
so every answer is checked here; one that is not a completion with token counts is a ``GenerationError``
marked as possibly billed. A retry after a call that may have been billed (a dropped connection) is an extra
call for the caller's budget. The API key comes from the environment and is never printed, logged or stored.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
from typing import Any

from lmtune.errors import InputError
from lmtune.llm.generation import ExtraCallHook, Generation, GenerationError, GenerationRequest, Generator

RETRYABLE_STATUS = (408, 409, 429, 500, 502, 503, 504)


class OpenAIGenerator(Generator):
    """Completions (``prompt``) or chat completions (``messages``) from ``base_url``."""

    def __init__(self, base_url: str, *, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
                 max_retries: int = 5, timeout: float = 60.0, backoff: float = 1.0, max_backoff: float = 30.0):
        """``timeout``: seconds one request may take, start to end; ``max_retries``: tries after a rate limit,
        a 5xx answer or a dropped connection."""
        import openai

        if not base_url.startswith(("http://", "https://")):
            raise InputError("endpoint", f"{base_url!r} is not an http(s) URL, e.g. http://127.0.0.1:8000/v1")
        if concurrency < 1:
            raise InputError("concurrency", f"must be >= 1, got {concurrency}")
        self.base_url = base_url.rstrip("/")
        self.backend_id = f"openai:{self.base_url}"
        # Local servers want no key; the client insists on a string, so a placeholder stands in.
        key = os.environ.get(api_key_env) or "not-needed"
        self.client = openai.AsyncOpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=timeout)
        self.timeout = timeout
        self.semaphore = asyncio.Semaphore(concurrency)
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.calls = 0
        self.retries = 0

    async def check(self) -> None:
        """Fail fast with ``error: endpoint: ...`` when nothing answers at the URL, or something that is no
        OpenAI-compatible API does (a web page, a proxy's error text: ``/v1/models`` is not JSON)."""
        import openai

        try:
            raw = await self.client.with_options(timeout=min(10.0, self.timeout),
                                                 max_retries=1).models.with_raw_response.list()
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise InputError("endpoint", f"cannot reach {self.base_url}: {_reason(exc)}") from None
        except openai.AuthenticationError:
            raise InputError("endpoint", f"{self.base_url} refused the API key (set it in the environment "
                             "variable named by `api_key_env`)") from None
        except openai.APIStatusError:
            return  # it answered; some servers do not implement /models
        try:
            json.loads(raw.http_response.content)
        except ValueError:
            text = " ".join(raw.http_response.text.split())[:80]
            raise InputError("endpoint", f"{self.base_url} did not answer /v1/models with JSON (it answered "
                             f"{text!r}); give the base URL of an OpenAI-compatible API, e.g. "
                             "http://127.0.0.1:8000/v1") from None

    async def generate(self, request: GenerationRequest, *, before_extra_call: ExtraCallHook | None = None
                       ) -> Generation:
        texts: list[str] = []
        reasons: list[str] = []
        prompt_tokens = completion_tokens = 0
        calls = 0
        while len(texts) < request.n:
            calls += 1
            if calls > request.n:
                raise GenerationError(f"{self.base_url} returned no choices", maybe_billed=True)
            if calls > 1 and before_extra_call is not None:
                before_extra_call(request, 0)
            missing = request.n - len(texts)
            seed = None if request.seed is None else request.seed + calls - 1
            try:
                answer = await self._call(request, missing, seed, before_extra_call)
            except GenerationError as exc:
                if calls > 1:  # the earlier calls were billed
                    raise GenerationError(str(exc), maybe_billed=True) from None
                raise
            texts += answer.texts[:missing]
            reasons += answer.finish_reasons[:missing]
            prompt_tokens += answer.prompt_tokens
            completion_tokens += answer.completion_tokens
        return Generation(texts=texts, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                          finish_reasons=reasons)

    async def _call(self, request: GenerationRequest, n: int, seed: int | None,
                    before_extra_call: ExtraCallHook | None) -> Generation:
        """One call for ``n`` completions, retried (with backoff) after a rate limit, a 5xx answer or a dropped
        connection; a retry after a call that may have been billed is an extra call for the caller's budget."""
        import openai

        params = _call_params(request, n, seed)
        attempt = 0
        maybe_billed = False  # whether an earlier attempt may have been billed
        while True:
            try:
                async with self.semaphore:
                    self.calls += 1
                    async with asyncio.timeout(self.timeout):  # the client's timeout is per read, this per request
                        if request.messages is not None:
                            messages = [{"role": r, "content": c} for r, c in request.messages]
                            response = await self.client.chat.completions.create(messages=messages, **params)
                        else:
                            response = await self.client.completions.create(prompt=request.prompt, **params)
                return self._read(response, request.messages is not None)
            except (openai.APITimeoutError, TimeoutError):
                raise GenerationError(f"{self.base_url}: no answer within {self.timeout:g} s (`timeout`)",
                                      maybe_billed=True) from None
            except openai.APIConnectionError as exc:  # dropped, reset, refused: it may have reached the server
                error, billed = exc, True
            except (openai.RateLimitError, openai.InternalServerError) as exc:
                error, billed = exc, False
            except openai.APIStatusError as exc:
                if exc.status_code not in RETRYABLE_STATUS:
                    raise GenerationError(f"{self.base_url}: HTTP {exc.status_code}: {_reason(exc)}",
                                          maybe_billed=maybe_billed) from None
                error, billed = exc, False
            except GenerationError:
                raise
            except Exception as exc:  # the client could not even parse the body (invalid JSON)
                raise GenerationError(f"{self.base_url} answered something that is not a completion: "
                                      f"{type(exc).__name__}: {_reason(exc)}", maybe_billed=True) from None
            attempt += 1
            if attempt > self.max_retries:
                raise GenerationError(f"{self.base_url}: gave up after {attempt} tries: {_reason(error)}",
                                      maybe_billed=maybe_billed or billed) from None
            if billed and before_extra_call is not None:
                before_extra_call(request, n)  # the retry is another call that may be billed in full
            maybe_billed = maybe_billed or billed
            self.retries += 1
            delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
            await asyncio.sleep(delay)

    def _read(self, response: Any, chat: bool) -> Generation:
        """Texts and token counts of an answer, or a ``GenerationError`` (possibly billed) saying what is wrong."""
        def bad(what: str) -> GenerationError:
            return GenerationError(f"{self.base_url} answered {what}", maybe_billed=True)

        choices = getattr(response, "choices", None)
        if not isinstance(choices, list):
            shown = " ".join(str(response).split())[:120]
            raise bad(f"something that is not a completion (no list of choices): {shown!r}")
        texts = []
        for choice in choices:
            text = getattr(getattr(choice, "message", None), "content", None) if chat else getattr(choice, "text",
                                                                                                    None)
            if text is None and chat:
                text = ""  # a chat answer with no content (a refusal, a tool call)
            if not isinstance(text, str):
                raise bad(f"a choice without text: {choice!r:.120}")
            texts.append(text)
        usage = getattr(response, "usage", None)
        if usage is None:
            raise bad("without a usage block; lmtune needs token counts to price calls")
        prompt, completion = _count(getattr(usage, "prompt_tokens", None)), _count(getattr(usage, "completion_tokens",
                                                                                             None))
        if prompt is None or completion is None:
            raise bad(f"usage that is not token counts: {usage!r:.160}")
        return Generation(texts=texts, prompt_tokens=prompt, completion_tokens=completion,
                          finish_reasons=[str(getattr(c, "finish_reason", None)) for c in choices])

    async def aclose(self) -> None:
        await self.client.close()


def _call_params(request: GenerationRequest, n: int, seed: int | None) -> dict[str, Any]:
    """The client's arguments for one call of ``request`` (other than the prompt or messages): what the request
    leaves out (None) stays out, so the server uses its own default."""
    params = {"model": request.model, "n": n, "max_tokens": request.max_tokens}
    for name in ("temperature", "top_p"):
        if getattr(request, name) is not None:
            params[name] = getattr(request, name)
    if request.stop:
        params["stop"] = list(request.stop)
    extra = {name: getattr(request, name) for name in ("top_k", "repetition_penalty")
             if getattr(request, name) is not None}
    if extra:  # not OpenAI's fields: vLLM, lmtune serve and others read them from the body
        params["extra_body"] = extra
    if seed is not None:
        params["seed"] = seed
    if request.response_format is not None:  # chat: a documented field; completions: vLLM/lmtune serve's extra
        response_format = json.loads(request.response_format)
        if request.messages is not None:
            params["response_format"] = response_format
        else:
            params["extra_body"] = {"response_format": response_format}
    return params


def _count(value: Any) -> int | None:
    """A token count as an int (rounded up), or None when it is not a finite number. Out-of-range counts pass:
    the caller clamps them to what the request could bill."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return math.ceil(value)


def _reason(exc: Exception) -> str:
    """The error in one short line; a status error's own text (the server's message) is enough."""
    cause = None if getattr(exc, "status_code", None) is not None else exc.__cause__ or exc.__context__
    text = str(exc) if cause is None else f"{exc} ({cause})"
    return " ".join(text.split())[:200]
