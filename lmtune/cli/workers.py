"""``lmtune worker`` and ``lmtune status``: join a study from any machine, see where it stands."""

from __future__ import annotations

import sys
from typing import Any

from lmtune.cli.app import app, console
from lmtune.cli.options import config_options, flags_of
from lmtune.config import build_config
from lmtune.runtime.quiet import quiet_libraries
from lmtune.runtime.status import StatusConfig
from lmtune.runtime.worker import WorkerConfig


@app.command("worker")
@config_options(WorkerConfig)
def worker_command(values: dict[str, Any] | None = None) -> None:
    """Join a study (from `lmtune lora --no-run` or any lmtune lora run) and run trials until its budget is reached.

    Start as many as you like, on as many machines as share the storage; --devices starts one per GPU here.
    """
    from lmtune.cli.progress import TrialProgress
    from lmtune.runtime.worker import run_worker

    cfg = build_config(WorkerConfig, **values)
    if cfg.devices is not None:
        _device_workers(cfg)
        return
    quiet_libraries(transformers=cfg.objective is None)
    with TrialProgress(console) as progress:
        result = run_worker(cfg, listener=progress)
    print(f"ran {result.ran} trials here; study {result.study_name}: {result.finished} of {result.budget} finished")


@app.command("status")
@config_options(StatusConfig)
def status_command(values: dict[str, Any] | None = None) -> None:
    """Trials by state, best so far, workers seen recently and compute used by a study."""
    from lmtune.runtime.status import format_status, study_status

    cfg = build_config(StatusConfig, **values)
    quiet_libraries(transformers=False)
    result = study_status(cfg)
    print(result.to_json() if cfg.as_json else format_status(result), end="" if cfg.as_json else "\n")


def _device_workers(cfg: WorkerConfig) -> None:
    """One ``lmtune worker --device D`` process per listed device, with this command's other options; exits with
    the first failing worker's status, 130 after Ctrl-C."""
    from lmtune.runtime.devices import INTERRUPTED, device_environment, parse_devices, run_processes

    devices = parse_devices(cfg.devices)
    flags = flags_of(WorkerConfig)
    shared = [part for name, value in cfg.model_dump(exclude={"device", "devices"}).items() if value is not None
              for part in (flags[name], str(value))]
    commands = []
    for device in devices:
        named, env = device_environment(device)
        commands.append(([sys.executable, "-m", "lmtune.cli", "worker", *shared, flags["device"], named], env))
    console.print(f"{len(devices)} workers on {', '.join(devices)}; Ctrl-C stops them all", style="dim")
    codes = run_processes(commands)
    print(f"workers on {', '.join(devices)} exited with {', '.join(map(str, codes))}")
    if INTERRUPTED in codes:
        raise SystemExit(INTERRUPTED)
    failed = next((code for code in codes if code), 0)
    if failed:
        raise SystemExit(failed)
