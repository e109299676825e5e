"""Run untrusted generated code in a sandbox the operating system enforces: Debian's bubblewrap (``bwrap``).

An audit hook inside the interpreter is no boundary (Python's documentation says so: code in the same process
finds the hook and disables it), so nothing here relies on the code's cooperation. What the code sees:

* a mount namespace whose root is read-only and holds only the interpreter, its standard library (third-party
  ``site-packages`` hidden) and the system's shared-library folders; ``/etc``, home folders, the project and
  every other host file are absent. HumanEval's prompts and tests import only the standard library (typing,
  math, random, copy, string, collections, re, hashlib), so nothing else is needed, and every extra package
  would be more code to attack with;
* a private scratch folder, ``/sandbox`` (its working folder, HOME and TMPDIR), a tmpfs of bounded size that
  holds the program and vanishes with the run;
* its own PID namespace: when the program ends or is killed, the kernel kills everything it started (a
  ``setsid`` child included), and bwrap dies with the process that started it (``--die-with-parent``);
* its own network namespace (nothing but an unconnected loopback: no TCP, no abstract Unix sockets of the
  host) and IPC and UTS namespaces, its own session (no terminal to type into);
* resource limits set before the code runs: address space, CPU seconds, file size, processes, no core dumps;
* an unprivileged uid, no capabilities, no way to gain any (bwrap sets ``no_new_privs``).

Two ways to drop privileges: a normal user's bwrap maps uid 65534 (nobody) of a new user namespace onto the
caller, and the kernel counts RLIMIT_NPROC per user namespace. For root that mapping lands on uid 0 of the
host, which the kernel exempts from RLIMIT_NPROC (a fork bomb would go unchecked), so as root bwrap makes the
other namespaces without a user namespace and the prelude switches to a real unprivileged uid itself: bwrap
leaves it only CAP_SETUID and CAP_SETGID, and switching away from uid 0 drops those too. That uid is drawn per
run from a range no account uses, not nobody's: RLIMIT_NPROC counts every process of a uid on the host, and
other services run as nobody (the test suite's PostgreSQL does), which would use up the run's processes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lmtune.errors import InputError

#: The unprivileged user and group the code runs as under a user namespace; as root, a uid from ``ROOT_UIDS``.
NOBODY = 65534
ROOT_UIDS = range(2_000_000_000, 2_100_000_000)
#: Processes (and threads) the code may have at once; a model's solution needs one.
PROCESSES = 8
#: Where the code runs, in the sandbox.
SCRATCH = "/sandbox"
INSTALL_HINT = "install bubblewrap (apt install bubblewrap)"

#: Runs first, as trusted code: limits, then an unprivileged uid if bwrap started it as root, then the program.
PRELUDE = r'''
import os, resource, sys
memory, cpu, file_size, processes, uid = (int(x) for x in sys.argv[1:6])
for limit, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_FSIZE, file_size),
                     (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(limit, (value, value))
if os.getuid() == 0:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
del memory, cpu, file_size, processes, uid, limit, value
sys.argv = ["solution.py"]
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


def check_sandbox() -> None:
    """Raise ``InputError("sandbox", ...)`` unless bubblewrap can build the sandbox here (a trivial program runs
    in it). Commands that run generated code call this before they open storage or spend anything."""
    _working_sandbox(_bwrap())


def run_code(code: str, *, timeout: float = 3.0, memory_mb: int = 512, file_mb: int = 16,
             processes: int = PROCESSES, scratch_mb: int = 64) -> SandboxResult:
    """Run ``code`` as a Python program in the sandbox and report how it ended, within ``timeout`` plus the time
    the kernel takes to kill what is left (well under a second). Never raises for the program's failures; raises
    ``InputError`` when there is no bubblewrap."""
    bwrap = _bwrap()
    limits = [str(memory_mb * 1024 ** 2), str(max(1, int(timeout) + 1)), str(file_mb * 1024 ** 2), str(processes),
              str(random.choice(ROOT_UIDS))]
    with _data(code) as program, _data(PRELUDE) as prelude, tempfile.TemporaryFile() as stderr:
        info_read, info_write = os.pipe()
        command = [bwrap, *_namespaces(), *_read_only_view(), *_scratch(scratch_mb, program, prelude),
                   "--remount-ro", "/", "--info-fd", str(info_write),
                   _interpreter(), "-S", "-s", "-B", f"{SCRATCH}/run.py", *limits]
        start = time.monotonic()
        try:
            try:
                process = subprocess.Popen(command, env=_environment(), stdin=subprocess.DEVNULL,
                                           stdout=subprocess.DEVNULL, stderr=stderr,
                                           pass_fds=(program, prelude, info_write), start_new_session=True)
            finally:
                os.close(info_write)
            code_or_none = _wait(process, timeout, info_read)
        finally:
            os.close(info_read)
        seconds, text = time.monotonic() - start, _tail(stderr)
    if code_or_none is None:
        return SandboxResult(False, "timeout", seconds, text)
    if code_or_none == 0:
        return SandboxResult(True, "passed", seconds, text)
    return SandboxResult(False, _exit_reason(code_or_none), seconds, text)


def _wait(process: subprocess.Popen, timeout: float, info: int) -> int | None:
    """bwrap's exit code, or None after ``timeout``; either way, once this returns, nothing of the run is left.

    The sandbox's first process (bwrap's reaper, pid 1 of its PID namespace) ends only after the kernel has killed
    every other process there. bwrap reports the program's exit as soon as the program ends, a moment before
    that, so this waits for the first process too; on timeout it kills the first process itself."""
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        code = None
    first = _first_process(info)
    if code is None and first is not None and process.poll() is None:  # bwrap has not reaped it: still its pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(first, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # bwrap itself, if still there; --die-with-parent does the rest
    process.wait()
    if first is not None:
        _until_gone(first, deadline=time.monotonic() + 0.5)
    return code


def _until_gone(pid: int, deadline: float) -> None:
    """Wait until ``pid`` is gone or a zombie (then its PID namespace is empty), or the deadline passes."""
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except (OSError, IndexError):
            return
        time.sleep(0.005)


def _first_process(info: int) -> int | None:
    """The host pid of the sandbox's first process, from what bwrap wrote to ``--info-fd`` once it started."""
    os.set_blocking(info, False)
    try:
        text = os.read(info, 4096).decode(errors="replace")
    except BlockingIOError:
        return None
    match = re.search(r'"child-pid"\s*:\s*(\d+)', text)
    return int(match.group(1)) if match else None


def _exit_reason(code: int) -> str:
    """bwrap reports a program killed by a signal as 128 + the signal's number, as shells do."""
    if code > 128 and code - 128 in signal.valid_signals():
        return f"exit code {code} (killed by {signal.Signals(code - 128).name})"
    return f"exit code {code}"


def _bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise InputError("sandbox", f"generated code runs only inside bubblewrap, and bwrap is not on PATH; "
                         f"{INSTALL_HINT}")
    return path


@functools.cache
def _working_sandbox(bwrap: str) -> None:
    """Run ``pass`` once per bwrap binary; a sandbox that cannot be built is an input error, not a failed check."""
    result = run_code("pass", timeout=30)
    if not result.passed:
        last = (result.stderr.strip().splitlines() or [result.reason])[-1]
        raise InputError("sandbox", f"{bwrap} cannot build the sandbox here ({last}); it needs user namespaces "
                         f"(or root); {INSTALL_HINT}")


def _namespaces() -> list[str]:
    """Every namespace but the user one as root (see the module's docstring); bwrap's own with uid 65534 else."""
    common = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
              "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if os.geteuid() == 0:
        return [*common, "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    return ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY), "--disable-userns", *common]


def _interpreter() -> str:
    """The real interpreter behind a virtual environment's ``python`` (the environment stays outside)."""
    return str(Path(sys.executable).resolve())


@functools.cache
def _read_only_view() -> tuple[str, ...]:
    """bwrap arguments for the read-only root (bwrap starts from an empty one): the system's shared-library
    folders (as links where the host has links), the interpreter, its standard library without site-packages,
    and its shared library."""
    links, binds = [], []
    for folder in ("/lib", "/lib32", "/lib64", "/libx32", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libx32"):
        if os.path.islink(folder):
            links += ["--symlink", os.readlink(folder), folder]
        elif os.path.isdir(folder):
            binds.append(Path(folder))
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    shared = Path(sysconfig.get_config_var("LIBDIR") or "/", sysconfig.get_config_var("INSTSONAME") or "-").resolve()
    binds += [path for path in (Path(_interpreter()), stdlib, shared)
              if path.exists() and not any(path.is_relative_to(folder) for folder in binds)]
    parents = sorted({parent for path in binds for parent in path.parents if parent != Path("/")})
    args: list[str] = []
    for parent in parents:  # else bwrap makes them 0700, which the sandbox's uid cannot walk through
        args += ["--perms", "0755", "--dir", str(parent)]
    for path in binds:
        args += ["--ro-bind", str(path), str(path)]
    for packages in {stdlib / "site-packages", stdlib / "dist-packages"}:
        if packages.is_dir():
            args += ["--tmpfs", str(packages), "--remount-ro", str(packages)]
    return (*links, *args, "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev")


def _scratch(scratch_mb: int, program: int, prelude: int) -> list[str]:
    """The private tmpfs the code works in, with the program and the prelude as read-only files in it."""
    return ["--size", str(scratch_mb * 1024 ** 2), "--perms", "1777", "--tmpfs", SCRATCH,
            "--perms", "0444", "--ro-bind-data", str(program), f"{SCRATCH}/solution.py",
            "--perms", "0444", "--ro-bind-data", str(prelude), f"{SCRATCH}/run.py",
            "--chdir", SCRATCH]


def _environment() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": SCRATCH, "TMPDIR": SCRATCH, "PYTHONHASHSEED": "0", "LANG": "C.UTF-8"}


@contextlib.contextmanager
def _data(text: str) -> Iterator[int]:
    """A file descriptor holding ``text`` from its start, for bwrap to copy (never on disk)."""
    fd = os.memfd_create("lmtune-sandbox")
    try:
        data = memoryview(text.encode())
        while data:
            data = data[os.write(fd, data):]
        os.lseek(fd, 0, os.SEEK_SET)
        yield fd
    finally:
        os.close(fd)


def _tail(stderr) -> str:
    """The last 2000 characters the program wrote to stderr (its file size is capped by RLIMIT_FSIZE)."""
    stderr.seek(0, os.SEEK_END)
    stderr.seek(max(0, stderr.tell() - 8000))
    return stderr.read().decode(errors="replace")[-2000:]
