"""One worker per device: the device list and its errors, the environment each worker gets, two workers on the CPU
finishing one study together, and Ctrl-C stopping them all (exit 130, every worker reaped, trials queued again)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from lmtune import attrs
from lmtune.errors import InputError
from lmtune.runtime.devices import device_environment, parse_devices

SPACE = "name: tiny\nparams:\n  rank: [4, 8, 16]\n  alpha_ratio: [1, 2]\n  learning_rate: [0.001, 0.003]\n"
SYNTHETIC = "lmtune.runtime.synthetic:sleepy_quadratic"


def env_for(folder: Path, seconds: float) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "LMTUNE_SYNTHETIC_SECONDS": str(seconds), "OMP_NUM_THREADS": "1",
            "LMTUNE_CACHE_DIR": str(folder / "cache")}


def lmtune(*args: str, folder: Path, seconds: float = 0.2, **options) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lmtune.cli", *args], cwd=folder, env=env_for(folder, seconds),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options)


@pytest.fixture(scope="module")
def made_study(tmp_path_factory) -> Path:
    """One 8-trial study made by ``lmtune lora --no-run`` (it checks model and data: the slow part), copied for
    each test."""
    folder = tmp_path_factory.mktemp("study")
    rows = [f"{'good' if i % 2 else 'bad'} review {i},{i % 2}" for i in range(60)]
    (folder / "reviews.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (folder / "space.yaml").write_text(SPACE)
    done = lmtune("lora", "--no-run", "--dataset", "reviews.csv", "--space", "space.yaml", "--sampler", "random",
                  "--trials", "8", "--max-length", "16", "--study-name", "s", "--storage",
                  f"sqlite:///{folder / 's.db'}", folder=folder)
    assert done.wait(timeout=300) == 0, done.communicate()[1]
    return folder / "s.db"


def copy_study(made: Path, folder: Path) -> str:
    shutil.copy(made, folder / "s.db")
    return f"sqlite:///{folder / 's.db'}"


def test_device_lists_and_their_errors():
    assert parse_devices(["cpu", "cpu"]) == ["cpu", "cpu"]
    assert parse_devices([" cpu ", ""]) == ["cpu"]
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cases = [([], "needs all"), (["gpu0"], "is not cpu or cuda:N"), (["cuda"], "is not cpu or cuda:N"),
             ([f"cuda:{count}"], f"this machine has {count} CUDA device(s)"), (["all", "cpu"], "is not cpu or cuda:N")]
    if count:
        cases.append((["cuda:0", "cuda:0"], "listed twice"))
        assert parse_devices(["all"]) == [f"cuda:{i}" for i in range(count)]
    else:
        cases.append((["all"], "this machine has no CUDA device"))
    for values, words in cases:
        with pytest.raises(InputError) as error:
            parse_devices(values)
        assert error.value.field == "devices" and words in error.value.message, values


def test_a_gpu_worker_sees_only_its_gpu():
    assert device_environment("cuda:1", {})[0] == "cuda:0"
    assert device_environment("cuda:1", {})[1]["CUDA_VISIBLE_DEVICES"] == "1"
    assert device_environment("cuda:1", {"CUDA_VISIBLE_DEVICES": "4,6"})[1]["CUDA_VISIBLE_DEVICES"] == "6"
    assert device_environment("cpu", {"CUDA_VISIBLE_DEVICES": "4"}) == ("cpu", {"CUDA_VISIBLE_DEVICES": "4"})


def test_two_workers_on_the_cpu_finish_one_study_together(made_study, tmp_path):
    url = copy_study(made_study, tmp_path)
    parent = lmtune("worker", "--devices", "cpu,cpu", "--study", "s", "--storage", url, "--objective", SYNTHETIC,
                    folder=tmp_path, seconds=0.5)
    out, err = parent.communicate(timeout=300)
    assert parent.returncode == 0, err
    assert "workers on cpu, cpu exited with 0, 0" in out
    trials = optuna.load_study(study_name="s", storage=url).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 8
    assert len({t.user_attrs[attrs.WORKER] for t in complete}) == 2  # two processes, each with its own id


def test_ctrl_c_stops_every_worker_and_exits_130(made_study, tmp_path):
    url = copy_study(made_study, tmp_path)
    parent = lmtune("worker", "--devices", "cpu,cpu", "--study", "s", "--storage", url, "--objective", SYNTHETIC,
                    folder=tmp_path, seconds=60)
    running = []
    deadline = time.monotonic() + 120
    while len(running) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        study = optuna.load_study(study_name="s", storage=url)
        running = [t for t in study.trials if t.state == TrialState.RUNNING and attrs.WORKER in t.user_attrs]
    assert len(running) == 2, parent.communicate(timeout=5)
    workers = {int(t.user_attrs[attrs.WORKER].rsplit(":", 1)[1]) for t in running}
    parent.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends to the foreground process
    out, err = parent.communicate(timeout=120)
    assert parent.returncode == 130, err
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # reaped: not even a zombie
    study = optuna.load_study(study_name="s", storage=url)
    interrupted = [t for t in study.trials if t.user_attrs.get(attrs.INTERRUPTED)]
    assert len(interrupted) == 2 and all(t.state == TrialState.FAIL for t in interrupted)
    assert len([t for t in study.trials if t.state == TrialState.WAITING]) == 2  # queued again for the next run
