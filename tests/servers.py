"""Real servers for tests: an ASGI app served by uvicorn on 127.0.0.1 in a thread."""

from __future__ import annotations

import socket
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A uvicorn server for an ASGI app on 127.0.0.1, in a thread, for one test module."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}/v1"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


class BillingServer:
    """A small OpenAI-compatible server that answers sums (``12+30=``) and keeps its own bill: every usage block
    it returns is appended to ``billed`` before the answer is sent, so a test can add up what a client really
    paid, whatever happened to the client.

    ``mode`` makes it misbehave: ``ok``; ``invalid_json`` and ``html`` (HTTP 200 with a body that is no
    completion); ``never`` (completions never answer); ``negative_usage`` and ``huge_usage`` (lying usage);
    ``http500`` (every completion fails). ``/v1/models`` answers in every mode.

    Kill points for fault-injection tests: ``hold("models")`` holds ``/v1/models`` (a client that has made no
    call yet); ``hold("before_bill", after=k)`` holds completions after the first k, before they are billed
    (calls in flight); ``hold("after_bill", after=k)`` bills them and holds the answers (billed, not yet
    received). ``release()`` lets every held request go on.

    ``with BillingServer(mode) as server:`` serves it on 127.0.0.1 (``server.url``) until the block ends.
    """

    def __init__(self, mode: str = "ok"):
        self.mode = mode
        self.billed: list[dict] = []  # {"prompt", "n", "max_tokens", "prompt_tokens", "completion_tokens"}
        self.requests = 0  # completions received since the last hold()
        self.models_requests = 0
        self.waiting = 0  # requests held now
        self._hold: str | None = None
        self._after = 0
        self._release = threading.Event()
        self._lock = threading.Lock()

    def __enter__(self) -> BillingServer:
        self._server = Server(self.app())
        self.url = self._server.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        self._server.__exit__(*exc)

    def hold(self, point: str | None, after: int = 0) -> None:
        with self._lock:
            self._hold, self._after, self.requests, self.models_requests = point, after, 0, 0
            self._release.clear()

    def release(self) -> None:
        with self._lock:
            self._hold = None
        self._release.set()

    async def _held(self, point: str, number: int | None = None) -> None:
        import asyncio

        if self._hold != point or (number is not None and number <= self._after):
            return
        with self._lock:
            self.waiting += 1
        while not self._release.is_set():
            await asyncio.sleep(0.01)
        with self._lock:
            self.waiting -= 1

    def app(self):
        import asyncio

        from starlette.applications import Starlette
        from starlette.responses import HTMLResponse, JSONResponse, Response
        from starlette.routing import Route

        async def models(request):
            with self._lock:
                self.models_requests += 1
            await self._held("models")
            return JSONResponse({"object": "list", "data": [{"id": "arith-lm", "object": "model"}]})

        async def completions(request):
            body = await request.json()
            with self._lock:
                self.requests += 1
                number = self.requests
            if self.mode == "http500":
                return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, status_code=500)
            if self.mode == "never":
                while not self._release.is_set():  # until the test ends
                    await asyncio.sleep(0.01)
                return JSONResponse({"error": {"message": "too late", "type": "server_error"}}, status_code=503)
            await self._held("before_bill", number)
            prompt, n, max_tokens = body["prompt"], int(body.get("n") or 1), int(body.get("max_tokens") or 16)
            left, _, right = prompt.rstrip("=").partition("+")
            answer = str(int(left) + int(right)) if left.isdigit() and right.isdigit() else "0"
            text = answer[:max_tokens]
            usage = {"prompt_tokens": len(prompt), "completion_tokens": n * min(len(answer) + 1, max_tokens)}
            if self.mode == "negative_usage":
                usage = {"prompt_tokens": -1000, "completion_tokens": -5000}
            elif self.mode == "huge_usage":
                usage = {"prompt_tokens": 10**6, "completion_tokens": 10**7}
            elif self.mode == "overbill":
                usage = {"prompt_tokens": len(prompt), "completion_tokens": 50 * n * max_tokens}
            with self._lock:
                self.billed.append({"prompt": prompt, "n": n, "max_tokens": max_tokens, **usage})
            await self._held("after_bill", number)
            if self.mode == "invalid_json":
                return Response('{"choices": [', media_type="application/json")
            if self.mode == "html":
                return HTMLResponse("<html><body>502 Bad Gateway</body></html>")
            choices = [{"index": i, "text": text, "finish_reason": "stop"} for i in range(n)]
            return JSONResponse({"id": "cmpl-x", "object": "text_completion", "created": 0, "model": body["model"],
                                 "choices": choices, "usage": {**usage, "total_tokens": sum(usage.values())}})

        return Starlette(routes=[Route("/v1/models", models), Route("/v1/completions", completions, methods=["POST"])])
