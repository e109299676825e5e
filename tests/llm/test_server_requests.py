"""``lmtune serve`` refuses what it cannot do, with the status an OpenAI client expects: one case per class of bad
request the issue-28 probe sent (each was HTTP 500, or HTTP 200 with nonsense), constrained decoding on every
bundled model or a 400 saying why, the body and prompt limits (413), and a server that stops on SIGTERM within
seconds even mid-generation and refuses a bad --host or a port in use before it loads anything. Every request
goes to a real server on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from lmtune.cli import main
from lmtune.llm.local import LocalGenerator
from lmtune.llm.server import MAX_BODY_BYTES, MAX_PROMPT_TOKENS, make_app
from tests.servers import Server, free_port


@pytest.fixture(scope="module")
def arith():
    with Server(make_app(LocalGenerator("arith-lm"))) as url:
        yield url


@pytest.fixture(scope="module")
def hag():
    with Server(make_app(LocalGenerator("hag-lm"))) as url:
        yield url


def post(url: str, body: dict | bytes, path: str = "/completions", timeout: float = 120) -> tuple[int, dict]:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=content, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}


PROMPT = {"model": "arith-lm", "prompt": "12+34=", "max_tokens": 4}
CHAT = {"model": "arith-lm", "messages": [{"role": "user", "content": "12+34="}], "max_tokens": 4}

#: (case, body, path, status, field, words in the message)
BAD = [
    ("a chat message without a role", {**CHAT, "messages": [{"content": "hi"}]}, "/chat/completions", 400,
     "messages.0.role", "is required"),
    ("a chat message with an unknown role", {**CHAT, "messages": [{"role": "wizard", "content": "hi"}]},
     "/chat/completions", 400, "messages.0.role", "must be one of"),
    ("no messages", {**CHAT, "messages": []}, "/chat/completions", 400, "messages", ""),
    ("stop strings that are numbers", {**PROMPT, "stop": [1, 2]}, "/completions", 400, "stop",
     "non-empty string or a list of them"),
    ("an empty prompt", {**PROMPT, "prompt": ""}, "/completions", 400, "prompt", "non-empty string"),
    ("two prompts", {**PROMPT, "prompt": ["1+1=", "2+2="]}, "/completions", 400, "prompt", "one non-empty string"),
    ("temperature NaN", {**PROMPT, "temperature": float("nan")}, "/completions", 400, "temperature", "finite"),
    ("temperature -1", {**PROMPT, "temperature": -1}, "/completions", 400, "temperature", "at least 0"),
    ("temperature 1e308", {**PROMPT, "temperature": 1e308}, "/completions", 400, "temperature", "at most 2"),
    ("top_p 5", {**PROMPT, "top_p": 5}, "/completions", 400, "top_p", "at most 1"),
    ("top_p -1", {**PROMPT, "top_p": -1}, "/completions", 400, "top_p", "at least 0"),
    ("seed -1", {**PROMPT, "seed": -1}, "/completions", 400, "seed", "at least 0"),
    ("seed 2**70", {**PROMPT, "seed": 2**70}, "/completions", 400, "seed", "at most"),
    ("n = 2.7", {**PROMPT, "n": 2.7}, "/completions", 400, "n", "fractional"),
    ("n too large", {**PROMPT, "n": 100000}, "/completions", 400, "n", "at most 128"),
    ("max_tokens 0", {**PROMPT, "max_tokens": 0}, "/completions", 400, "max_tokens", "at least 1"),
    ("max_tokens 10**9", {**PROMPT, "max_tokens": 10**9}, "/completions", 400, "max_tokens", "at most 4096"),
    ("repetition_penalty 0", {**PROMPT, "repetition_penalty": 0}, "/completions", 400, "repetition_penalty",
     "greater than 0"),
    ("streaming", {**PROMPT, "stream": True}, "/completions", 400, "stream", ""),
    ("a body that is not JSON", b'{"model": "arith-lm", "prompt": ', "/completions", 400, "body", "not JSON"),
    ("a body that is a list", b"[1, 2]", "/completions", 400, "body", "JSON object"),
    ("a body nested 3,000 deep", b'{"model": "arith-lm", "prompt": "1", "x": ' + b"[" * 3000 + b"]" * 3000 + b"}",
     "/completions", 400, "body", "nested too deeply"),
    ("a schema nested 100 deep", {**PROMPT, "response_format": schema_format(
        json.loads('{"type": "array", "items": ' * 100 + "{}" + "}" * 100))}, "/completions", 400,
     "response_format", "nested deeper than 64"),
    ("a schema of 100,000 characters", {**PROMPT, "response_format": schema_format(
        {"enum": ["x" * 1000] * 100})}, "/completions", 400, "response_format", "longer than"),
    ("an unknown model", {**PROMPT, "model": "gpt-9"}, "/completions", 404, "model", "not found"),
    ("a prompt over the token limit", {**PROMPT, "prompt": "1" * (MAX_PROMPT_TOKENS + 1)}, "/completions", 413,
     "prompt", f"over the limit of {MAX_PROMPT_TOKENS}"),
]


@pytest.mark.parametrize(("case", "body", "path", "status", "field", "words"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_request_is_refused_naming_the_field(arith, case, body, path, status, field, words):
    got, reply = post(arith, body, path)
    error = reply["error"]
    assert got == status and error["param"] == field, reply
    assert error["message"].startswith(f"{field}: ") and words in error["message"], reply


def test_the_server_still_answers_after_every_refusal(arith):
    status, reply = post(arith, {**PROMPT, "temperature": 0})
    assert status == 200 and reply["choices"][0]["text"] == "46"


def test_a_body_over_the_limit_is_413_before_it_is_read(arith):
    """The probe's 30 MB prompt got no answer in 130 s while the server grew to 11 GB."""
    host, port = arith.removeprefix("http://").removesuffix("/v1").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.putrequest("POST", "/v1/completions")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(30 * 1024 * 1024))
    connection.endheaders()
    connection.send(b'{"model": "arith-lm", "prompt": "' + b"1" * 1000)
    reply = connection.getresponse()
    assert reply.status == 413 and str(MAX_BODY_BYTES) in json.loads(reply.read())["error"]["message"]
    connection.close()


# -- constrained decoding on every bundled model --------------------------------------------------------------


def test_arith_lm_decodes_what_its_vocabulary_can_write_and_refuses_the_rest(arith):
    status, reply = post(arith, {**PROMPT, "max_tokens": 6, "temperature": 1.0, "seed": 3,
                                 "response_format": schema_format({"type": "integer", "minimum": 0})})
    assert status == 200 and isinstance(json.loads(reply["choices"][0]["text"]), int), reply
    for response_format in ({"type": "json_object"}, schema_format({"type": "object"}),
                            schema_format({"type": "string"})):
        status, reply = post(arith, {**PROMPT, "response_format": response_format})
        assert status == 400 and reply["error"]["message"] == (
            "response_format: model arith-lm's vocabulary cannot begin any reply of this schema"), reply


def test_hag_lm_writes_json_of_the_schema(hag):
    schema = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["a"], "additionalProperties": False}
    for seed in range(3):
        status, reply = post(hag, {"model": "hag-lm", "prompt": "r:abc>", "max_tokens": 20, "temperature": 1.0,
                                   "seed": seed, "response_format": schema_format(schema)})
        assert status == 200 and reply["choices"][0]["finish_reason"] == "stop", reply
        assert 0 <= json.loads(reply["choices"][0]["text"])["a"] <= 9
    status, reply = post(hag, {"model": "hag-lm", "prompt": "r:abc>", "max_tokens": 200, "temperature": 1.0,
                               "seed": 0, "response_format": {"type": "json_object"}})
    choice = reply["choices"][0]
    assert status == 200 and choice["text"].startswith("{"), reply
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(choice["text"]), dict)


def test_a_schema_whose_instances_are_all_infinite_never_ends_as_stop(agent_endpoint):
    """On agent-lm this returned '{"' with finish_reason 'stop': llguidance's parser gave up and allowed the end."""
    schema = {"type": "object", "properties": {"child": {"$ref": "#"}}, "required": ["child"]}
    for seed in range(2):
        status, reply = post(agent_endpoint, {"model": "agent-lm", "messages": [{"role": "user", "content": "{"}],
                                              "max_tokens": 40, "temperature": 1.0, "seed": seed,
                                              "response_format": schema_format(schema)}, "/chat/completions")
        assert status == 400 or reply["choices"][0]["finish_reason"] == "length", reply


# -- the process: SIGTERM, --host, a port in use ---------------------------------------------------------------


def run_serve(args: list[str], capsys, monkeypatch) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["lmtune", "serve", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize(("host", "words"), [("", "is empty"), ("not an address!", "is not an address"),
                                             ("192.0.2.1", "cannot listen on 192.0.2.1")])
def test_a_bad_host_is_an_input_error(host, words, capsys, monkeypatch):
    code, err = run_serve(["--host", host, "--port", str(free_port())], capsys, monkeypatch)
    assert code == 2 and err.strip().startswith("error: host: ") and words in err, err
    assert len(err.strip().splitlines()) == 1


def test_a_port_in_use_is_an_input_error(capsys, monkeypatch):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, err = run_serve(["--port", str(port)], capsys, monkeypatch)
    assert code == 2 and err.strip() == (f"error: port: {port} is in use on 127.0.0.1; stop what listens there or "
                                         "pick another"), err


def test_sigterm_stops_the_server_within_seconds_even_mid_generation():
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "lmtune.cli", "serve", "--model", "agent-lm", "--port",
                                str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url, replies = f"http://127.0.0.1:{port}/v1", []
    try:
        deadline = time.time() + 120
        while True:
            assert process.poll() is None, process.stderr.read().decode()
            try:
                urllib.request.urlopen(url + "/models", timeout=5).close()
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.time() < deadline, "lmtune serve did not start"
                time.sleep(0.3)
        long = {"model": "agent-lm", "prompt": "once", "max_tokens": 4096, "n": 32, "temperature": 1.0}
        thread = threading.Thread(target=lambda: replies.append(_try_post(url, long)), daemon=True)
        thread.start()
        time.sleep(2.0)  # decoding by now: 32 x 4096 tokens take far longer
        assert thread.is_alive(), replies
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        assert time.monotonic() - started < 6.0
        thread.join(timeout=10)
        assert replies and replies[0] in (503, "closed"), replies  # answered 'interrupted', or cut off
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _try_post(url: str, body: dict) -> int | str:
    try:
        return post(url, body, timeout=60)[0]
    except (urllib.error.URLError, ConnectionError, http.client.HTTPException):
        return "closed"
