"""A trial whose process was killed on this host is failed as interrupted and queued again by the next run, on
every storage: found by pid and process start time, so a reused pid does not keep a dead trial RUNNING, and a
trial of a live process (this one included) or of another host is left alone."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from lmtune import attrs
from lmtune.runtime.orphans import fail_dead_trials, process_start
from lmtune.runtime.storage import make_storage
from lmtune.runtime.trials import counted_trials

SYNTHETIC = "lmtune.runtime.synthetic:sleepy_quadratic"
SPACE_YAML = "name: tiny\nparams:\n  rank: [4, 8, 16]\n  alpha_ratio: [1, 2]\n  learning_rate: [0.001, 0.003]\n"


def test_process_start_tells_processes_apart():
    assert process_start() == process_start(os.getpid()) is not None
    assert process_start(1) not in (None, process_start())  # started at boot, long before this one
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert process_start(int(dead.stdout)) is None


def test_dead_or_reused_pids_fail_live_ones_and_other_hosts_stay(tmp_path):
    study = optuna.create_study(storage=make_storage(f"journal:///{tmp_path / 'j.log'}"), study_name="s")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host, parent = socket.gethostname(), os.getppid()
    workers = [
        (f"{host}:{dead.stdout.strip()}", None),  # 0: dead pid
        (f"{host}:{parent}", process_start(parent)),  # 1: alive, same process
        (f"{host}:{parent}", "another-boot:12345"),  # 2: alive pid, but a later process took it
        (f"{host}:{os.getpid()}", process_start()),  # 3: this very process (another thread's trial)
        (f"elsewhere:{dead.stdout.strip()}", None),  # 4: another host
    ]
    for worker, started in workers:
        trial = study.ask()
        trial.set_user_attr(attrs.WORKER, worker)
        if started is not None:
            trial.set_user_attr(attrs.WORKER_STARTED, started)
    study.ask()  # 5: recorded no worker yet, just started
    assert fail_dead_trials(study) == [0, 2]
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "RUNNING", "FAIL", "RUNNING", "RUNNING", "RUNNING"]
    assert all(trials[n].user_attrs[attrs.INTERRUPTED] for n in (0, 2))
    assert "is gone" in trials[0].user_attrs[attrs.FAIL_REASON]
    assert "the pid now belongs to another process" in trials[2].user_attrs[attrs.FAIL_REASON]


def lmtune(*args: str, cwd: Path, seconds: float, wait: bool = True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LMTUNE_SYNTHETIC_SECONDS": str(seconds), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lmtune.cli", *args]
    if wait:
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_a_worker_killed_on_journal_storage_is_recovered_and_the_budget_finished(tmp_path):
    """Journal storage has no heartbeats: the killed worker's trial used to stay RUNNING for good."""
    url = f"journal:///{tmp_path / 'studies.log'}"
    rows = "".join(f"{'good' if i % 2 else 'bad'} review {i},{i % 2}\n" for i in range(40))
    (tmp_path / "d.csv").write_text("text,label\n" + rows)
    (tmp_path / "space.yaml").write_text(SPACE_YAML)
    created = lmtune("lora", "--no-run", "--dataset", "d.csv", "--space", "space.yaml", "--sampler", "random",
                     "--trials", "4", "--max-length", "16", "--study-name", "j", "--storage", url, cwd=tmp_path,
                     seconds=0)
    assert created.returncode == 0, created.stderr
    worker = lmtune("worker", "--storage", url, "--study", "j", "--objective", SYNTHETIC, cwd=tmp_path, seconds=30,
                    wait=False)
    deadline, running = time.time() + 120, []
    while not running and time.time() < deadline:
        time.sleep(0.2)
        study = optuna.load_study(study_name="j", storage=make_storage(url))
        running = [t for t in study.get_trials(states=(TrialState.RUNNING,))
                   if t.user_attrs.get(attrs.WORKER_STARTED) and len(t.params) == 3]
    assert running, worker.stderr.read() if worker.poll() is not None else "the worker never ran a trial"
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)

    rerun = lmtune("worker", "--storage", url, "--study", "j", "--objective", SYNTHETIC, cwd=tmp_path, seconds=0)
    assert rerun.returncode == 0, rerun.stderr
    study = optuna.load_study(study_name="j", storage=make_storage(url))
    counted = counted_trials(study)
    assert len(counted) == 4 and all(t.state == TrialState.COMPLETE for t in counted)
    dead = study.trials[running[0].number]
    assert dead.state == TrialState.FAIL and dead.user_attrs[attrs.INTERRUPTED]
    assert "is gone" in dead.user_attrs[attrs.FAIL_REASON]
    retry = [t for t in study.trials if t.user_attrs.get(attrs.RETRY_OF) == dead.number]
    assert len(retry) == 1 and retry[0].params == dead.params and retry[0].state == TrialState.COMPLETE
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
