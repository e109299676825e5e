"""``lmtune serve``: a small OpenAI-compatible HTTP server in front of a local causal LM.

``transformers serve`` (5.23) was tried first; for lmtune's arithmetic model it ignores ``n`` and
``temperature``, crashes on stop strings with a character tokenizer and on ``/v1/models`` without a hub
cache (docs/decisions.md). This server implements what the tuner needs and nothing more:
``/v1/completions`` and ``/v1/chat/completions`` with n, temperature, top_p, max_tokens, stop, seed,
``response_format`` (JSON schema or JSON object, decoded under the schema's grammar: ``lmtune.llm.constrained``)
and a usage block (plus vLLM's top_k and repetition_penalty), and ``/v1/models``. Sampling is ``LocalGenerator``'s;
concurrent requests are decoded as one batch. A generator that chooses its own decoding (``lmtune hag``'s
two-stage model) reports the hyperparameters it used in a ``hyperparameters`` field of every choice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from lmtune.config import build_config
from lmtune.llm import check_device
from lmtune.llm.config import ServeConfig
from lmtune.llm.constrained import GrammarError
from lmtune.llm.generation import GenerationError, GenerationRequest

if TYPE_CHECKING:
    from lmtune.llm.local import LocalGenerator

log = logging.getLogger(__name__)


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}}, status_code=status)


def make_app(generator: LocalGenerator) -> Starlette:
    """The ASGI app serving ``generator`` under its name (``generator.name``)."""

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [
            {"id": generator.name, "object": "model", "created": 0, "owned_by": "lmtune"}]})

    async def complete(request: Request, chat: bool) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "body must be a JSON object")
        if body.get("model") != generator.name:
            return _error(404, f"model {body.get('model')!r} not found; this server has {generator.name!r}",
                          "not_found_error")
        try:
            gen_request = _parse(body, chat)
        except (TypeError, ValueError) as exc:
            return _error(400, str(exc))
        if gen_request.response_format is not None:
            try:
                generator.grammars.check(gen_request.response_format)
            except GrammarError as exc:
                return _error(400, str(exc))
        try:
            result = await generator.generate(gen_request)  # concurrent requests decode as one batch
        except GenerationError as exc:
            return _error(500, str(exc), "server_error")
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
                       for i, (text, reason) in enumerate(zip(result.texts, result.finish_reasons, strict=True))]
        else:
            choices = [{"index": i, "text": text, "logprobs": None, "finish_reason": reason}
                       for i, (text, reason) in enumerate(zip(result.texts, result.finish_reasons, strict=True))]
        if result.hyperparameters is not None:
            for choice in choices:
                choice["hyperparameters"] = result.hyperparameters
        return JSONResponse({
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "object": "chat.completion" if chat
            else "text_completion", "created": int(time.time()), "model": generator.name, "choices": choices,
            "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                      "total_tokens": result.prompt_tokens + result.completion_tokens}})

    async def completions(request: Request) -> JSONResponse:
        return await complete(request, chat=False)

    async def chat_completions(request: Request) -> JSONResponse:
        return await complete(request, chat=True)

    return Starlette(routes=[Route("/v1/models", models), Route("/v1/completions", completions, methods=["POST"]),
                             Route("/v1/chat/completions", chat_completions, methods=["POST"])])


def _parse(body: dict, chat: bool) -> GenerationRequest:
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    options = {"model": body["model"], "n": int(body.get("n") or 1), "max_tokens": int(body.get("max_tokens") or 16),
               "temperature": _float(body.get("temperature")), "top_p": _float(body.get("top_p")),
               "stop": tuple(stop) if stop else None, "seed": None if body.get("seed") is None else int(body["seed"]),
               "response_format": None if body.get("response_format") is None
               else json.dumps(body["response_format"]),
               "top_k": None if body.get("top_k") in (None, -1) else int(body["top_k"]),  # vLLM: -1 is no cut
               "repetition_penalty": _float(body.get("repetition_penalty"))}
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list")
        return GenerationRequest(messages=tuple((str(m["role"]), str(m["content"])) for m in messages), **options)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ValueError("prompt must be one string")
    return GenerationRequest(prompt=prompt, **options)


def _float(value) -> float | None:
    return None if value is None else float(value)


def serve(config: ServeConfig | None = None, *, generator=None, **fields: Any) -> None:
    """Run the server until interrupted; ``generator`` replaces the local model ``config.model`` names."""
    import uvicorn

    from lmtune.llm.local import LocalGenerator

    cfg = config or build_config(ServeConfig, **fields)
    check_device(cfg.device)
    generator = generator or LocalGenerator(cfg.model, device=cfg.device)
    app = make_app(generator)
    _say_when_ready(app, f"{generator.name} at http://{cfg.host}:{cfg.port}/v1")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")


def _say_when_ready(app: Starlette, what: str) -> None:
    """Log one line once the server listens (uvicorn's own lines are quieted), so a person or a script starting
    ``lmtune serve`` knows where to send requests and when."""

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        log.info("Serving %s (ready; Ctrl-C stops)", what)
        yield

    app.router.lifespan_context = lifespan
