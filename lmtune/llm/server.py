"""``lmtune serve``: a small OpenAI-compatible HTTP server in front of a local causal LM.

``transformers serve`` (5.23) was tried first; for lmtune's arithmetic model it ignores ``n`` and
``temperature``, crashes on stop strings with a character tokenizer and on ``/v1/models`` without a hub
cache (docs/decisions.md). This server implements what the tuner needs and nothing more:
``/v1/completions`` and ``/v1/chat/completions`` with n, temperature, top_p, max_tokens, stop, seed,
``response_format`` (JSON schema or JSON object, decoded under the schema's grammar: ``lmtune.llm.constrained``)
and a usage block (plus vLLM's top_k and repetition_penalty), and ``/v1/models``. Sampling is ``LocalGenerator``'s;
concurrent requests are decoded as one batch. A generator that chooses its own decoding (``lmtune hag``'s
two-stage model) reports the hyperparameters it used in a ``hyperparameters`` field of every choice.

It refuses what it cannot do, with the status an OpenAI client expects: a body over ``MAX_BODY_BYTES`` or a
prompt over ``MAX_PROMPT_TOKENS`` is 413 before it is decoded (a 30 MB prompt once grew the server to 11 GB);
a malformed body or an out-of-range field is 400 naming the field (``lmtune.llm.api``); a ``response_format`` the
model cannot honour is 400 saying why. SIGTERM stops it within seconds: running generations are interrupted
at their next token, and uvicorn's graceful shutdown is bounded.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import logging
import socket
import time
import uuid
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from lmtune.config import build_config, validation_to_input_error
from lmtune.errors import InputError
from lmtune.llm import check_device
from lmtune.llm.api import ChatBody, CompletionBody
from lmtune.llm.config import ServeConfig
from lmtune.llm.constrained import GrammarError
from lmtune.llm.generation import GenerationError, Generator

#: The largest request body, and the longest prompt (in the model's tokens, chat template included).
MAX_BODY_BYTES = 1024 * 1024
MAX_PROMPT_TOKENS = 8192
#: Seconds uvicorn waits for open requests after SIGTERM before it cancels them.
SHUTDOWN_SECONDS = 3

log = logging.getLogger(__name__)


class Refused(Exception):
    """A request answered with an error status: ``status``, the field at fault (or None) and why."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                       "code": None}}, status_code=self.status)


def make_app(generator: Generator) -> Starlette:
    """The ASGI app serving ``generator`` under its name (``generator.name``)."""

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [
            {"id": generator.name, "object": "model", "created": 0, "owned_by": "lmtune"}]})

    async def complete(request: Request, chat: bool) -> JSONResponse:
        try:
            body = await _read_body(request)
            gen_request = _validated(body, ChatBody if chat else CompletionBody, generator)
            try:
                result = await generator.generate(gen_request)  # concurrent requests decode as one batch
            except GenerationError as exc:
                status = 503 if str(exc).startswith("interrupted") else 500
                raise Refused(status, str(exc), kind="server_error") from None
        except Refused as refused:
            return refused.response()
        return JSONResponse(_reply(generator.name, result, chat))

    async def completions(request: Request) -> JSONResponse:
        return await complete(request, chat=False)

    async def chat_completions(request: Request) -> JSONResponse:
        return await complete(request, chat=True)

    return Starlette(routes=[Route("/v1/models", models), Route("/v1/completions", completions, methods=["POST"]),
                             Route("/v1/chat/completions", chat_completions, methods=["POST"])])


async def _read_body(request: Request) -> dict:
    """The JSON object of the body, read no further than ``MAX_BODY_BYTES`` (413 past it, whatever
    Content-Length claims)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise Refused(413, f"body: {declared} bytes, over the limit of {MAX_BODY_BYTES}", "body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise Refused(413, f"body: over the limit of {MAX_BODY_BYTES} bytes", "body")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except ValueError as exc:
        raise Refused(400, f"body: not JSON ({exc})"[:200], "body") from None
    except RecursionError:
        raise Refused(400, "body: nested too deeply to read", "body") from None
    if not isinstance(body, dict):
        raise Refused(400, "body: must be a JSON object", "body")
    return body


def _validated(body: dict, kind: type[CompletionBody | ChatBody], generator: Generator):
    """The body as a ``GenerationRequest`` the model can decode: fields in range (400), the served model (404),
    a prompt within ``MAX_PROMPT_TOKENS`` (413), a ``response_format`` the model can honour (400)."""
    try:
        parsed = kind.model_validate(body)
    except ValidationError as exc:
        error = validation_to_input_error(exc, kind)
        field = ".".join(part for part in error.field.split(".") if part.isidentifier() or part.isdigit())
        raise Refused(400, f"{field}: {error.message}", field) from None
    if parsed.model != generator.name:
        raise Refused(404, f"model: {parsed.model!r} not found; this server has {generator.name!r}", "model",
                      "not_found_error")
    try:
        gen_request = parsed.request()
    except ValueError as exc:
        raise Refused(400, str(exc)) from None
    tokens = generator.count_prompt_tokens(gen_request)
    if tokens is not None and tokens > MAX_PROMPT_TOKENS:
        raise Refused(413, f"{'messages' if gen_request.messages else 'prompt'}: {tokens} tokens, over the limit "
                      f"of {MAX_PROMPT_TOKENS}", "messages" if gen_request.messages else "prompt")
    if tokens == 0:
        raise Refused(400, "prompt: encodes to no token of this model", "prompt")
    if gen_request.response_format is not None:
        grammars = getattr(generator, "grammars", None)
        if grammars is None:
            raise Refused(400, f"response_format: model {generator.name!r} does not support constrained decoding",
                          "response_format")
        try:
            grammars.check(gen_request.response_format)
        except GrammarError as exc:
            message = str(exc).replace("this model's", f"model {generator.name}'s")
            message = message.removeprefix("response_format").lstrip(": ")
            raise Refused(400, f"response_format: {message}", "response_format") from None
    return gen_request


def _reply(name: str, result, chat: bool) -> dict:
    pairs = zip(result.texts, result.finish_reasons, strict=True)
    if chat:
        choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
                   for i, (text, reason) in enumerate(pairs)]
    else:
        choices = [{"index": i, "text": text, "logprobs": None, "finish_reason": reason}
                   for i, (text, reason) in enumerate(pairs)]
    if result.hyperparameters is not None:
        for choice in choices:
            choice["hyperparameters"] = result.hyperparameters
    return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion", "created": int(time.time()), "model": name,
            "choices": choices, "usage": {"prompt_tokens": result.prompt_tokens,
                                          "completion_tokens": result.completion_tokens,
                                          "total_tokens": result.prompt_tokens + result.completion_tokens}}


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` for uvicorn, or ``InputError`` naming the host or the port: an empty or
    unknown host, a port in use. Bound here, before the model loads, so a mistake costs nothing."""
    if not host.strip():
        raise InputError("host", "is empty; give an address to listen on, e.g. 127.0.0.1 (0.0.0.0 for every one)")
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        except (socket.gaierror, UnicodeError) as exc:
            raise InputError("host", f"{host!r} is not an address or a name of this machine ({exc})") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise InputError("port", f"{port} is in use on {host}; stop what listens there or pick another") from None
        raise InputError("host", f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def serve(config: ServeConfig | None = None, *, generator=None, **fields: Any) -> None:
    """Run the server until SIGTERM or Ctrl-C; ``generator`` replaces the local model ``config.model`` names."""
    import uvicorn

    from lmtune.llm.local import LocalGenerator

    cfg = config or build_config(ServeConfig, **fields)
    check_device(cfg.device)
    sock = listening_socket(cfg.host, cfg.port)
    try:
        generator = generator or LocalGenerator(cfg.model, device=cfg.device)
        app = make_app(generator)
        _say_when_ready(app, f"{generator.name} at http://{cfg.host}:{cfg.port}/v1")
        server = _stopping_server()(uvicorn.Config(app, host=cfg.host, port=cfg.port,
                                                   log_level="warning", timeout_graceful_shutdown=SHUTDOWN_SECONDS),
                                    generator)
        server.run(sockets=[sock])
    finally:
        sock.close()


def _stopping_server() -> type:
    """The server class, made when the server starts: uvicorn is not imported with this module."""
    import uvicorn

    class StoppingServer(uvicorn.Server):
        """uvicorn's server, which on SIGTERM or Ctrl-C also interrupts the generations in flight (they run in
        worker threads, which uvicorn's shutdown would otherwise wait for)."""

        def __init__(self, config: uvicorn.Config, generator: Generator):
            super().__init__(config)
            self.generator = generator

        def handle_exit(self, sig, frame) -> None:
            for part in (self.generator, getattr(self.generator, "base", None)):  # a two-stage model's base
                if hasattr(part, "interrupt"):
                    part.interrupt()
            super().handle_exit(sig, frame)

    return StoppingServer


def _say_when_ready(app: Starlette, what: str) -> None:
    """Log one line once the server listens (uvicorn's own lines are quieted), so a person or a script starting
    ``lmtune serve`` knows where to send requests and when."""

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        log.info("Serving %s (ready; Ctrl-C stops)", what)
        yield

    app.router.lifespan_context = lifespan
