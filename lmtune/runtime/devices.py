"""One worker per device on a node: which devices a list names, and running one process per device until all end.

Each worker is an ordinary ``lmtune worker`` process of its own; they share nothing but the study's storage, which
hands each a different trial (Optuna's own distributed pattern: no scheduler). A worker for ``cuda:N`` sees only
that GPU (``CUDA_VISIBLE_DEVICES``), so nothing it loads, a sampler's encoder included, lands on another worker's
device. The processes start in sessions of their own, so the terminal's Ctrl-C reaches only the parent, which
forwards it once to every worker: each records its running trial as interrupted and exits, and the parent exits
130 after reaping them all.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence

from lmtune.errors import InputError

#: What ``devices`` may hold besides device names.
ALL = "all"
#: Exit status of a process stopped by Ctrl-C (128 + SIGINT), as the shell reports it.
INTERRUPTED = 130


def parse_devices(values: Sequence[str]) -> list[str]:
    """The devices of a list: ``all`` (every CUDA device), or ``cpu`` (as often as given: several workers on the
    CPU) and ``cuda:N`` (each once); ``InputError("devices", ...)`` for anything else or a device this machine lacks.
    """
    import torch

    values = [value.strip() for value in values if value.strip()]
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if values == [ALL]:
        if not count:
            raise InputError("devices", "all: this machine has no CUDA device; list devices instead (cpu,cpu runs "
                                        "two workers on the CPU)")
        return [f"cuda:{index}" for index in range(count)]
    if not values:
        raise InputError("devices", "needs all, or devices such as cuda:0,cuda:1 or cpu,cpu")
    devices = []
    for value in values:
        if value == "cpu":
            devices.append(value)
            continue
        kind, _, index = value.partition(":")
        if kind != "cuda" or not index.isdigit():
            raise InputError("devices", f"{value!r} is not cpu or cuda:N (or all, alone)")
        if int(index) >= count:
            raise InputError("devices", f"{value!r}: this machine has {count} CUDA device(s), numbered from 0")
        if value in devices:
            raise InputError("devices", f"{value!r} is listed twice; one worker per GPU")
        devices.append(value)
    return devices


def device_environment(device: str, environ: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """The device a worker for ``device`` names, and its environment: ``cuda:N`` becomes the only GPU it sees
    (the N-th that this process sees), named ``cuda:0`` there."""
    env = dict(os.environ if environ is None else environ)
    if not device.startswith("cuda:"):
        return device, env
    index = int(device.partition(":")[2])
    visible = [v.strip() for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    env["CUDA_VISIBLE_DEVICES"] = visible[index] if visible else str(index)
    return "cuda:0", env


def run_processes(commands: Sequence[tuple[list[str], dict[str, str]]]) -> list[int]:
    """Run each ``(argv, environment)`` as a process of its own and wait for all; SIGINT and SIGTERM received
    meanwhile are forwarded to every one still running. Returns their exit statuses (``INTERRUPTED`` for a
    process that a forwarded signal ended)."""
    processes: list[subprocess.Popen] = []
    received: list[int] = []

    def forward(signum, _frame) -> None:
        received.append(signum)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        for argv, env in commands:
            if received:  # Ctrl-C while starting them: start no more
                break
            processes.append(subprocess.Popen(argv, env=env, start_new_session=True))
        codes = [process.wait() for process in processes]
    finally:
        for process in processes:  # the parent failed: no worker outlives it
            if process.poll() is None:
                process.kill()
                process.wait()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return [INTERRUPTED if received and code in (-signal.SIGINT, -signal.SIGTERM) else code for code in codes]
