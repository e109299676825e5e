"""The code sandbox under attack: every escape the issue-28 probe found against the old audit-hook sandbox, run
against the bubblewrap one, must be contained. Each attack aims at a real host file, socket or port the test
made, and the test checks the host side (nothing written, nothing received, nothing left running), not only
that the program failed. Programs that observe their own containment assert it and must pass."""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest

from lmtune.errors import InputError
from lmtune.inference.sandbox import PROCESSES, check_sandbox, run_code

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="bubblewrap is Linux-only")


@pytest.fixture
def outside(tmp_path) -> Path:
    """A host folder anyone may write to, so only the sandbox's walls can stop a write."""
    folder = tmp_path / "host"
    folder.mkdir()
    folder.chmod(0o777)
    return folder


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


GC_HOOK_PATCH = """
import gc, sys
for obj in gc.get_objects():  # the old sandbox's audit hook was a closure: replace its cells
    if callable(obj) and getattr(obj, "__name__", "") == "hook" and getattr(obj, "__closure__", None):
        for cell in obj.__closure__:
            try:
                cell.cell_contents = (lambda *a, **k: True) if callable(cell.cell_contents) else ()
            except Exception:
                pass
"""

#: (name, program writing to TARGET, a path in the host folder)
WRITES = [
    ("open after patching the audit hook via gc", GC_HOOK_PATCH + "open(TARGET, 'w').write('x')"),
    ("open", "open(TARGET, 'w').write('x')"),
    ("makedirs, then open", "import os\nos.makedirs(os.path.dirname(TARGET), exist_ok=True)\n"
                            "open(TARGET, 'w').write('x')"),
    ("os.mkfifo", "import os\nos.mkfifo(TARGET)"),
    ("sqlite3.connect", "import sqlite3\nsqlite3.connect(TARGET).execute('create table t (x)').connection.commit()"),
    ("patched os.path.realpath and builtins.isinstance",
     "import builtins, os\nos.path.realpath = lambda p, **k: '/sandbox/x'\nbuiltins.isinstance = lambda *a: True\n"
     "open(TARGET, 'w').write('x')"),
    ("a subprocess", "import subprocess, sys\n"
                     "subprocess.run([sys.executable, '-c', f'open({TARGET!r}, \"w\").write(\"x\")'], check=True)"),
    ("ctypes' libc open", "import ctypes, os\nlibc = ctypes.CDLL(None)\n"
                          "fd = libc.open(TARGET.encode(), os.O_WRONLY | os.O_CREAT, 0o666)\n"
                          "assert fd >= 0 and libc.write(fd, b'x', 1) == 1"),
    ("os.symlink and os.link", "import os\nos.symlink('/sandbox', TARGET)"),
]


@pytest.mark.parametrize(("name", "program"), WRITES, ids=[w[0] for w in WRITES])
def test_no_write_reaches_a_host_folder(outside, name, program):
    target = outside / "escaped"
    before = listing(outside)
    result = run_code(f"TARGET = {str(target)!r}\n{program}\n", timeout=10)
    assert listing(outside) == before, result
    assert not result.passed and ("Error" in result.stderr or "exit code" in result.reason), result


def test_subprocess_and_ctypes_run_but_see_no_host_file(outside):
    secret = outside / "secret.txt"
    secret.write_text("host secret")
    secret.chmod(0o644)
    program = f"""
import ctypes, os, subprocess, sys
SECRET = {str(secret)!r}
child = subprocess.run([sys.executable, "-c", "print(open({str(secret)!r}).read())"], capture_output=True)
assert child.returncode == 1 and b"FileNotFoundError" in child.stderr, child
assert subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True).stdout == b"42\\n"
libc = ctypes.CDLL(None)
assert libc.open(SECRET.encode(), os.O_RDONLY) == -1
assert libc.getpid() == os.getpid() and os.getuid() != 0 and os.getgid() != 0 and os.getgroups() in ([], [os.getgid()])
for path in ("/etc/shadow", "/etc/passwd", "/home", "/var", {str(outside)!r}, {__file__!r}, {sys.prefix!r}):
    assert not os.path.exists(path), path
status = open("/proc/self/status").read()
assert "CapEff:\\t0000000000000000" in status and "NoNewPrivs:\\t1" in status
assert len([p for p in os.listdir("/proc") if p.isdigit()]) <= 3  # bwrap's reaper, this process (and ls)
"""
    result = run_code(program, timeout=10)
    assert result.passed, result.stderr


def test_reading_etc_shadow_fails():
    result = run_code("print(open('/etc/shadow').read())")
    assert not result.passed and "FileNotFoundError" in result.stderr


def test_the_interpreter_sees_the_standard_library_only():
    program = "import hashlib, json, math, re, sqlite3, typing\nimport numpy\n"
    result = run_code(program)
    assert not result.passed and "No module named 'numpy'" in result.stderr


@pytest.mark.parametrize("address", ["path", "abstract"])
def test_nothing_reaches_a_unix_socket_of_the_host(outside, address):
    name = str(outside / "host.sock") if address == "path" else f"\0lmtune-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(name)
        if address == "path":
            os.chmod(name, 0o777)
        server.listen(1)
        server.settimeout(1.0)
        result = run_code(f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({name!r})\n"
                          "s.sendall(b'stolen')\n", timeout=5)
        with pytest.raises(TimeoutError):
            server.accept()
    assert not result.passed and ("FileNotFoundError" in result.stderr or "ConnectionRefusedError"
                                  in result.stderr), result


def test_tcp_to_the_host_is_blocked():
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(1.0)
        port = server.getsockname()[1]
        result = run_code(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'x')\n"
                          "socket.create_connection(('1.1.1.1', 53), timeout=2)\n", timeout=5)
        with pytest.raises(TimeoutError):
            server.accept()
    assert not result.passed and "ConnectionRefusedError" in result.stderr


def test_thirty_children_hit_the_process_limit():
    program = """
import os, sys, time
children = 0
for _ in range(30):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(5)
        os._exit(0)
    children += 1
print("children", children, file=sys.stderr)
"""
    result = run_code(program, timeout=10)
    assert result.passed, result.stderr
    assert int(result.stderr.split("children")[1]) < PROCESSES


def marked_processes(marker: str) -> list[int]:
    """Host processes whose command line holds ``marker``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("parent", ["runs into the timeout", "exits at once"])
def test_a_setsid_child_does_not_outlive_the_run(parent):
    marker = f"lmtune-daughter-{uuid.uuid4().hex}"
    program = f"""
import os, sys, time
if os.fork() == 0:
    os.setsid()
    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(8); open('late.txt', 'w')", {marker!r}])
time.sleep(0.5)
{"time.sleep(30)" if parent == "runs into the timeout" else ""}
"""
    start = time.monotonic()
    result = run_code(program, timeout=3)
    assert time.monotonic() - start <= 4.0
    assert result.reason == ("timeout" if parent == "runs into the timeout" else "passed"), result
    assert marked_processes(marker) == []  # killed with its PID namespace before run_code returned


def test_memory_bomb():
    start = time.monotonic()
    result = run_code("x = bytearray(2 * 1024 ** 3)\n", memory_mb=256, timeout=5)
    assert not result.passed and "MemoryError" in result.stderr and time.monotonic() - start < 5


def test_file_size_bomb_and_a_full_scratch_folder():
    program = """
import errno
try:
    open("big", "wb").write(b"x" * (40 * 1024 ** 2))
except OSError as exc:
    assert exc.errno == errno.EFBIG, exc
else:
    raise AssertionError("a 40 MB file was written under a 16 MB limit")
try:
    for i in range(10):
        with open(f"part{i}", "wb") as f:
            f.write(b"x" * (15 * 1024 ** 2))
except OSError as exc:
    assert exc.errno == errno.ENOSPC, exc
else:
    raise AssertionError("150 MB were written to a 64 MB scratch folder")
"""
    result = run_code(program, file_mb=16, scratch_mb=64, timeout=10)
    assert result.passed, result.stderr


def test_fork_bomb_is_contained_and_returns_in_time():
    start = time.monotonic()
    result = run_code("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                      timeout=3)
    assert result.reason == "timeout" and time.monotonic() - start <= 4.0
    assert run_code("print('after')").passed  # the host can still start processes


def test_cpu_spin_is_killed_at_the_timeout():
    start = time.monotonic()
    result = run_code("while True:\n    pass\n", timeout=1.0)
    assert result.reason == "timeout" and time.monotonic() - start <= 2.0


def test_the_scratch_folder_is_private_and_writable():
    program = ("import os, tempfile\nopen('mine.txt', 'w').write('ok')\n"
               "assert open('/sandbox/mine.txt').read() == 'ok'\n"
               "assert tempfile.gettempdir() == os.getcwd() == '/sandbox'\n")
    assert run_code(program).passed
    fresh = run_code("import os\nassert sorted(os.listdir('.')) == ['run.py', 'solution.py'], os.listdir('.')")
    assert fresh.passed, fresh.stderr  # nothing from the run before


def test_without_bubblewrap_it_is_an_input_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(InputError, match=r"apt install bubblewrap") as error:
        check_sandbox()
    assert error.value.field == "sandbox"
    with pytest.raises(InputError, match="bwrap is not on PATH"):
        run_code("pass")


# -- end to end: lmtune infer --task humaneval against an endpoint whose completions attack ------------------


class HostileEndpoint:
    """An OpenAI-compatible server on 127.0.0.1 whose every completion tries to create a database at ``target``
    (a host path); when that fails it exits 0, so the check passes and the test knows the code ran. It counts the
    completions it served."""

    def __init__(self, target: Path):
        self.target = target
        self.completions = 0

    def app(self):
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        body = (f"    import sqlite3, sys\n    try:\n        sqlite3.connect({str(self.target)!r}).execute("
                "'create table t (x)').connection.commit()\n    except Exception:\n        sys.exit(0)\n"
                "    return None\n")

        async def models(request):
            return JSONResponse({"object": "list", "data": [{"id": "arith-lm", "object": "model"}]})

        async def completions(request):
            asked = await request.json()
            self.completions += 1
            choices = [{"index": i, "text": body, "finish_reason": "stop"} for i in range(int(asked.get("n") or 1))]
            return JSONResponse({"id": "cmpl-x", "object": "text_completion", "created": 0, "model": asked["model"],
                                 "choices": choices, "usage": {"prompt_tokens": 10, "completion_tokens": 10,
                                                               "total_tokens": 20}})

        return Starlette(routes=[Route("/v1/models", models), Route("/v1/completions", completions, methods=["POST"])])


def infer(folder: Path, url: str, monkeypatch, capsys) -> tuple[int, str]:
    from lmtune.cli import main

    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "argv", ["lmtune", "infer", "--endpoint", url, "--models", "arith-lm", "--task",
                                      "humaneval", "--inference-budget", "10", "--optimization-budget", "3",
                                      "--max-trials", "1", "--n", "1,1", "--max-tokens", "64,64", "--retries", "0",
                                      "--no-test-pareto", "--storage", "sqlite:///s.db", "--output-dir", "out"])
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, capsys.readouterr().err


def test_lmtune_infer_humaneval_contains_a_hostile_completion(tmp_path, outside, monkeypatch, capsys):
    """Every one of the 164 problems is checked once (tuning and test split), each running the hostile body."""
    import lmtune.inference.tasks as tasks
    from tests.servers import Server

    checked, check = [], tasks.humaneval_check

    def counted(instance: dict, text: str, timeout: float = 5.0) -> bool:
        checked.append(check(instance, text, timeout))
        return checked[-1]

    monkeypatch.setattr(tasks, "humaneval_check", counted)
    endpoint = HostileEndpoint(outside / "evil.db")
    with Server(endpoint.app()) as url:
        code, err = infer(tmp_path, url, monkeypatch, capsys)
    assert code == 0, err
    assert len(checked) == 164 and all(checked)  # the code ran, its sqlite3.connect failed, and it said so
    assert listing(outside) == set()  # the database the completions asked for was never created
    assert not list(tmp_path.rglob("evil.db"))


def test_lmtune_infer_humaneval_without_bubblewrap_stops_before_any_call(tmp_path, monkeypatch, capsys):
    from tests.servers import Server

    endpoint = HostileEndpoint(tmp_path / "never.db")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with Server(endpoint.app()) as url:
        code, err = infer(tmp_path, url, monkeypatch, capsys)
    assert code == 2 and err.strip().startswith("error: sandbox: ") and "apt install bubblewrap" in err, err
    assert len(err.strip().splitlines()) == 1
    assert endpoint.completions == 0 and [p.name for p in tmp_path.iterdir()] == ["bin"]
