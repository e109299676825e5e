"""Any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server, ``transformers serve``, ``lmtune serve``)
through the official ``openai`` client.

What the client does not do for a tuner, this does: a concurrency limit, retries with exponential backoff and
jitter on rate limits, timeouts, dropped connections and 5xx answers (and nothing else: a bad request fails at
once), more calls when a server returns fewer than ``n`` choices (Ollama and ``transformers serve`` ignore
``n``), and a clear error when the server cannot be reached. The API key comes from the environment and is
never printed, logged or stored.
"""

from __future__ import annotations

import asyncio
import os
import random

from lmtune.errors import InputError
from lmtune.llm.generation import ExtraCallHook, Generation, GenerationError, GenerationRequest, Generator

RETRYABLE_STATUS = (408, 409, 429, 500, 502, 503, 504)


class OpenAIGenerator(Generator):
    """Completions (``prompt``) or chat completions (``messages``) from ``base_url``."""

    def __init__(self, base_url: str, *, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
                 max_retries: int = 5, timeout: float = 60.0, backoff: float = 1.0, max_backoff: float = 30.0):
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
        self.semaphore = asyncio.Semaphore(concurrency)
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.calls = 0
        self.retries = 0

    async def check(self) -> None:
        """Fail fast with ``error: endpoint: ...`` when nothing answers at the URL."""
        import openai

        try:
            await self.client.with_options(timeout=10.0, max_retries=1).models.list()
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise InputError("endpoint", f"cannot reach {self.base_url}: {_reason(exc)}") from None
        except openai.AuthenticationError:
            raise InputError("endpoint", f"{self.base_url} refused the API key (set it in the environment "
                             "variable named by --api-key-env)") from None
        except openai.APIStatusError:
            pass  # it answered; some servers do not implement /models

    async def generate(self, request: GenerationRequest, *, before_extra_call: ExtraCallHook | None = None
                       ) -> Generation:
        texts: list[str] = []
        reasons: list[str] = []
        prompt_tokens = completion_tokens = 0
        calls = 0
        while len(texts) < request.n:
            calls += 1
            if calls > request.n:
                raise GenerationError(f"{self.base_url} returned no choices")
            if calls > 1 and before_extra_call is not None:
                before_extra_call(request)
            missing = request.n - len(texts)
            seed = None if request.seed is None else request.seed + calls - 1
            answer = await self._call(request, missing, seed)
            texts += answer.texts[:missing]
            reasons += answer.finish_reasons[:missing]
            prompt_tokens += answer.prompt_tokens
            completion_tokens += answer.completion_tokens
        return Generation(texts=texts, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                          finish_reasons=reasons)

    async def _call(self, request: GenerationRequest, n: int, seed: int | None) -> Generation:
        import openai

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
        attempt = 0
        while True:
            try:
                async with self.semaphore:
                    self.calls += 1
                    if request.messages is not None:
                        messages = [{"role": r, "content": c} for r, c in request.messages]
                        response = await self.client.chat.completions.create(messages=messages, **params)
                        texts = [c.message.content or "" for c in response.choices]
                    else:
                        response = await self.client.completions.create(prompt=request.prompt, **params)
                        texts = [c.text for c in response.choices]
                break
            except (openai.RateLimitError, openai.APITimeoutError, openai.APIConnectionError,
                    openai.InternalServerError) as exc:
                error = exc
            except openai.APIStatusError as exc:
                if exc.status_code not in RETRYABLE_STATUS:
                    raise GenerationError(f"{self.base_url}: HTTP {exc.status_code}: {_reason(exc)}") from None
                error = exc
            attempt += 1
            if attempt > self.max_retries:
                raise GenerationError(f"{self.base_url}: gave up after {attempt} tries: {_reason(error)}") from None
            self.retries += 1
            delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
            await asyncio.sleep(delay)
        usage = response.usage
        if usage is None:
            raise GenerationError(f"{self.base_url} sent no usage block; lmtune needs token counts to price calls")
        return Generation(texts=texts, prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                          finish_reasons=[str(c.finish_reason) for c in response.choices])

    async def aclose(self) -> None:
        await self.client.close()


def _reason(exc: Exception) -> str:
    cause = exc.__cause__ or exc.__context__
    text = str(exc) if cause is None else f"{exc} ({cause})"
    return " ".join(text.split())[:200]
