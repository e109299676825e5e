"""Run untrusted generated code: a separate process with time, CPU, memory and file-size limits, a fresh temporary
directory as its only writable place, no network, no child processes.

Layers, each enough for honest mistakes and together a fair bar for a model's code (not for a determined
attacker; use a container for that): resource limits (``setrlimit``), a killed process group on timeout, a new
network namespace (``unshare -n``) where the system allows it, and inside the child an audit hook
(PEP 578, cannot be removed) that refuses writes outside the directory, sockets, subprocesses and ctypes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PRELUDE = r'''
import os, sys

def _install(os=os, sys=sys):
    root = os.path.realpath(os.getcwd())
    path_events = {"os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.chmod", "os.chown", "os.symlink", "os.link",
                   "os.truncate", "os.utime", "os.chdir", "shutil.rmtree", "shutil.copyfile", "shutil.move"}
    blocked = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
               "os.forkpty", "os.kill", "os.killpg", "ctypes.", "pty.", "webbrowser.")
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def inside(path):
        if isinstance(path, int):
            return True
        full = os.path.realpath(os.path.join(root, os.fsdecode(path)))
        return full == root or full.startswith(root + os.sep)

    def hook(event, args):
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None))[:3]
            writes = bool(mode) and any(c in str(mode) for c in "wax+")
            writes = writes or (isinstance(flags, int) and bool(flags & write_flags))
            if writes and path is not None and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} outside the sandbox directory is not allowed")
        elif event in path_events:
            for arg in args:
                if isinstance(arg, (str, bytes, os.PathLike)) and not inside(arg):
                    raise PermissionError(f"sandbox: {event} on {arg!r} outside the sandbox directory is not allowed")
        elif event.startswith(blocked):
            raise PermissionError(f"sandbox: {event} is not allowed")

    sys.addaudithook(hook)

_install()
with open("solution.py") as _file:
    _code = compile(_file.read(), "solution.py", "exec")
exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
'''


@dataclass(frozen=True)
class SandboxResult:
    """How a program ended: ``passed`` means exit code 0 within the limits."""

    passed: bool
    reason: str  # "passed", "timeout", "exit code N", ...
    seconds: float
    stderr: str = ""


@functools.cache
def network_namespace_available() -> bool:
    """Whether ``unshare -n`` can give a child its own (empty) network namespace here."""
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def run_code(code: str, *, timeout: float = 3.0, memory_mb: int = 512, file_mb: int = 16) -> SandboxResult:
    """Run ``code`` as a Python program in the sandbox and report how it ended (never raises for its failures)."""
    def limits() -> None:
        import resource

        memory = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        cpu = int(timeout) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb * 1024 * 1024,) * 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    with tempfile.TemporaryDirectory(prefix="lmtune-sandbox-") as folder:
        Path(folder, "solution.py").write_text(code)
        Path(folder, "run.py").write_text(PRELUDE)
        command = [sys.executable, "-I", "-B", "run.py"]
        if network_namespace_available():
            command = ["unshare", "-n", *command]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": folder, "TMPDIR": folder,
               "PYTHONHASHSEED": "0", "LANG": "C.UTF-8"}
        start = time.monotonic()
        process = subprocess.Popen(command, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, preexec_fn=limits, start_new_session=True)
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            process.communicate()
            return SandboxResult(False, "timeout", time.monotonic() - start)
        finally:
            _kill_group(process)  # nothing it started may outlive it
        seconds = time.monotonic() - start
        text = stderr.decode(errors="replace")[-2000:]
        if process.returncode == 0:
            return SandboxResult(True, "passed", seconds, text)
        if process.returncode < 0:
            return SandboxResult(False, f"killed by {signal.Signals(-process.returncode).name}", seconds, text)
        return SandboxResult(False, f"exit code {process.returncode}", seconds, text)


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
