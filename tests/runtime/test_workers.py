"""Many workers on one study against a real PostgreSQL server: exact budget, no duplicate configs,
a worker killed mid-trial, the main process killed and resumed, storage URLs and credentials.

The server is a throwaway cluster started here (``pg_cluster``). Without PostgreSQL binaries these
tests fail in CI (env CI set) and are skipped elsewhere.
"""

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lmtune import attrs
from lmtune.runtime.trials import counted_trials, describe_failure, is_budget_stub
from lmtune.space import load_space
from tests.pg_cluster import PostgresCluster, free_port

SPACE_YAML = """name: tiny
params:
  rank: [4, 8, 16]
  alpha_ratio: [1, 2]
  learning_rate: [0.001, 0.003]
  dropout: [0.0, 0.1]
"""  # 24 configs
SPACE_PARAMS = 4
SYNTHETIC = "lmtune.runtime.synthetic:sleepy_quadratic"
FAST_HEARTBEAT = ["--heartbeat-interval", "1", "--grace-period", "3"]


@pytest.fixture(scope="module")
def postgres():
    cluster = PostgresCluster()
    if not cluster.available:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries (initdb, pg_ctl) not found; .ci/run installs Debian's postgresql",
                        pytrace=False)
        pytest.skip("PostgreSQL binaries not found; install Debian's postgresql (in CI this test fails instead)")
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(postgres, request):
    """A fresh database per test on the module's server."""
    return postgres.create_database(f"t_{re.sub(r'[^a-z0-9]', '_', request.node.name.lower())[:40]}_"
                                    f"{secrets.token_hex(3)}")


def write_inputs(folder: Path) -> tuple[str, str]:
    rows = [f"{'good' if i % 2 else 'bad'} review number {i},{'pos' if i % 2 else 'neg'}" for i in range(120)]
    (folder / "reviews.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (folder / "space.yaml").write_text(SPACE_YAML)
    return str(folder / "reviews.csv"), str(folder / "space.yaml")


def env_for(folder: Path, seconds: float = 0.3) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "LMTUNE_CACHE_DIR": str(folder / "cache"),
            "LMTUNE_SYNTHETIC_SECONDS": str(seconds), "OMP_NUM_THREADS": "1"}


def lmtune(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300):
    return subprocess.run([sys.executable, "-m", "lmtune.cli", *args], cwd=cwd, env=env or env_for(cwd),
                          capture_output=True, text=True, timeout=timeout)


def create_study(url: str, name: str, folder: Path, *extra: str, sampler: str, trials: int, startup: int = 3) -> None:
    data, space = write_inputs(folder)
    result = lmtune("lora", "--no-run", "--dataset", data, "--space", space, "--sampler", sampler,
                    "--startup-trials", str(startup), "--trials", str(trials), "--max-length", "16",
                    "--study-name", name, "--storage", url, *extra, cwd=folder)
    assert result.returncode == 0, result.stderr


def start_workers(count: int, url: str, name: str, folder: Path, seconds: float) -> list[subprocess.Popen]:
    cmd = [sys.executable, "-m", "lmtune.cli", "worker", "--storage", url, "--study", name, "--objective", SYNTHETIC,
           *FAST_HEARTBEAT]
    return [subprocess.Popen(cmd, cwd=folder, env=env_for(folder, seconds), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(count)]


def finish(workers: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str]]:
    return [(w.wait(timeout=timeout), w.communicate()[1]) for w in workers]


def config_of(trial) -> tuple:
    return tuple(sorted(trial.params.items()))


def test_four_workers_reach_the_budget_exactly_and_language_bo_never_repeats_a_config(pg_url, tmp_path, postgres):
    """Also after a resume: a fresh process given a larger budget proposes no config any worker held."""
    # Without the learnable token each fit takes a fraction of a second: the test is about workers.
    create_study(pg_url, "lbo", tmp_path, "--no-learnable-token", sampler="language-bo", trials=12, startup=3)
    results = finish(start_workers(4, pg_url, "lbo", tmp_path, seconds=0.3))
    assert [rc for rc, _ in results] == [0] * 4, results
    assert not any(postgres.password in err for _, err in results)

    study = optuna.load_study(study_name="lbo", storage=pg_url)
    counted = counted_trials(study)
    assert len(counted) == 12 and all(t.state == TrialState.COMPLETE for t in counted)
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    ran = [t for t in study.trials if not is_budget_stub(t)]
    assert len(ran) == 12  # stubs (lost the race for the last slot) never ran and hold no config
    assert len({config_of(t) for t in ran}) == 12  # no config proposed twice across the 4 workers
    assert len({t.user_attrs["worker"] for t in ran}) >= 2
    study.set_user_attr(attrs.BUDGET, 14)
    assert [rc for rc, _ in finish(start_workers(1, pg_url, "lbo", tmp_path, seconds=0.3))] == [0]
    ran = [t for t in optuna.load_study(study_name="lbo", storage=pg_url).trials if not is_budget_stub(t)]
    assert len(ran) == 14 and len({config_of(t) for t in ran}) == 14


# One Optuna sampler (every one goes through the same DistinctSampler, seeded per trial; each sampler's own
# never-repeat rule is in tests/samplers/test_contract.py) and language-bo+'s own claims (language-bo's: the test
# above, resume included). The agent needs an endpoint: tests/samplers/test_agent.py runs it against lmtune serve.
@pytest.mark.parametrize("sampler", ["tpe", "language-bo+"])
def test_no_sampler_repeats_a_config_across_workers_or_on_resume(sampler, pg_url, tmp_path, postgres):
    """Every worker and every resumed run used to seed its sampler alike and replay the same draws."""
    name = f"distinct-{sampler}"
    create_study(pg_url, name, tmp_path, sampler=sampler, trials=9, startup=3)
    results = finish(start_workers(3, pg_url, name, tmp_path, seconds=0.2))
    assert [rc for rc, _ in results] == [0] * 3, results
    optuna.load_study(study_name=name, storage=pg_url).set_user_attr(attrs.BUDGET, 12)  # a larger budget
    results = finish(start_workers(1, pg_url, name, tmp_path, seconds=0.2))  # resumed by a fresh process
    assert [rc for rc, _ in results] == [0], results
    ran = [t for t in optuna.load_study(study_name=name, storage=pg_url).trials if not is_budget_stub(t)]
    assert len(ran) == 12 and len({config_of(t) for t in ran}) == 12


def running_trial_of(url: str, name: str, pid: int, params: int = SPACE_PARAMS):
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:  # not created yet
        return None
    # A trial whose config is still being suggested holds only some of its params: wait for all of them.
    return next((t for t in study.get_trials(states=(TrialState.RUNNING,))
                 if t.user_attrs.get("worker", "").endswith(f":{pid}") and len(t.params) == params), None)


def test_worker_killed_mid_trial_is_retried_once_and_the_study_completes(pg_url, tmp_path, postgres):
    create_study(pg_url, "kill", tmp_path, sampler="tpe", trials=10)
    workers = start_workers(4, pg_url, "kill", tmp_path, seconds=1.0)
    victim, deadline = workers[0], time.time() + 120
    killed = None
    while killed is None and time.time() < deadline:
        killed = running_trial_of(pg_url, "kill", victim.pid)
        time.sleep(0.1)
    assert killed is not None, "the worker never ran a trial"
    victim.send_signal(signal.SIGKILL)
    results = finish(workers[1:])
    assert [rc for rc, _ in results] == [0] * 3, results
    victim.wait(timeout=10)

    study = optuna.load_study(study_name="kill", storage=pg_url)
    counted = counted_trials(study)
    assert len(counted) == 10 and all(t.state == TrialState.COMPLETE for t in counted)
    dead = study.trials[killed.number]
    assert dead.state == TrialState.FAIL and dead not in counted
    # Whichever comes first fails it: another worker's heartbeat check (stale), or a run starting on this host that
    # finds its process gone (interrupted, lmtune.runtime.orphans); either way it is retried exactly once.
    worker, reason = dead.user_attrs["worker"], describe_failure(dead)
    stale = reason.startswith(f"stale: {worker} stopped sending heartbeats")
    assert stale or reason.startswith(f"interrupted: its process {worker} is gone"), reason
    retries = [t for t in study.trials if killed.number in (t.system_attrs.get("failed_trial"),
                                                            t.user_attrs.get(attrs.RETRY_OF))]
    assert len(retries) == 1 and retries[0].params == killed.params and retries[0].state == TrialState.COMPLETE
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]

    status = lmtune("status", "--storage", pg_url, "--study", "kill", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "trials: 10 of 10 counted" in status.stdout and "1 retried" in status.stdout
    assert f"FAIL trial {killed.number}: {'stale' if stale else 'interrupted'}:" in status.stdout
    assert postgres.password not in status.stdout + status.stderr and "lmtune:***@127.0.0.1" in status.stdout
    data = json.loads(lmtune("status", "--storage", pg_url, "--study", "kill", "--json", cwd=tmp_path).stdout)
    assert data["states"]["COMPLETE"] == 10 and data["best"]["value"] <= 0 and data["compute_seconds"] >= 10
    assert 3 <= len(data["workers_recent"]) <= 4


def test_main_process_killed_and_lmtune_lora_resumes_the_study(pg_url, tmp_path, postgres):
    data, _ = write_inputs(tmp_path)
    # 40 steps per trial: long enough that the trial found running is still running when the kill lands
    cmd = [sys.executable, "-m", "lmtune.cli", "lora", "--dataset", data, "--proxy", "steps:40", "--max-length",
           "16", "--space", "lora-small", "--sampler", "random", "--trials", "3", "--no-final-train",
           "--storage", pg_url, "--study-name", "main", *FAST_HEARTBEAT]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env_for(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline, killed = time.time() + 300, None
    while killed is None and time.time() < deadline:
        killed = running_trial_of(pg_url, "main", proc.pid, params=len(load_space("lora-small").params))
        if killed is not None and killed.number == 0:
            killed = None  # let one trial finish first
        time.sleep(0.2)
    assert killed is not None, proc.stderr.read() if proc.poll() is not None else "no second trial"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)

    result = subprocess.run(cmd, cwd=tmp_path, env=env_for(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Resuming study" in result.stderr and postgres.password not in result.stderr + result.stdout
    study = optuna.load_study(study_name="main", storage=pg_url)
    counted = counted_trials(study)
    assert len(counted) == 3 and all(t.state == TrialState.COMPLETE for t in counted)
    dead = study.trials[killed.number]  # failed by the rerun at once (its process is gone), not after the grace period
    assert dead.state == TrialState.FAIL and "is gone" in dead.user_attrs[attrs.FAIL_REASON]
    retry = next(t for t in study.trials if t.user_attrs.get(attrs.RETRY_OF) == killed.number)
    assert retry.params == killed.params and retry in counted


@pytest.mark.parametrize(("storage", "message"), [
    ("mysql://root:topsecret@127.0.0.1:{port}/x", "no database driver"),
    ("postgresql://lmtune:topsecret@127.0.0.1:{port}/x", "Connection refused"),
    ("lmtune.db", "is not a storage URL"),
    ("journal:///no/such/folder/x.log", "does not exist"),
])
def test_wrong_or_unreachable_storage_is_one_line_exit_2_without_the_password(tmp_path, storage, message):
    result = lmtune("worker", "--storage", storage.format(port=free_port()), "--study", "s", cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: storage: ") and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr and "topsecret" not in result.stderr + result.stdout


def test_wrong_password_unknown_study_and_bad_objective_are_named(pg_url, tmp_path, postgres):
    wrong = pg_url.replace(postgres.password, "not-the-password")
    result = lmtune("status", "--storage", wrong, "--study", "s", cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and "password authentication failed" in result.stderr
    assert "not-the-password" not in result.stderr and ":***@" in result.stderr
    result = lmtune("worker", "--storage", pg_url, "--study", "nope", cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("error: study: no study 'nope'"), result.stderr
    create_study(pg_url, "s", tmp_path, sampler="random", trials=2)
    result = lmtune("worker", "--storage", pg_url, "--study", "s", "--objective", "no_such_module:f", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: objective: cannot import"), result.stderr
    assert postgres.password not in result.stderr
    assert len(counted_trials(optuna.load_study(study_name="s", storage=pg_url))) == 0


def test_worker_runs_the_studys_own_lora_objective_from_another_folder(tmp_path):
    url = f"sqlite:///{tmp_path / 'lora.db'}"
    create_study(url, "real", tmp_path, "--proxy-fraction", "0.5", sampler="random", trials=2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = lmtune("worker", "--storage", url, "--study", "real", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert "ran 2 trials here; study real: 2 of 2 finished" in result.stdout
    study = optuna.load_study(study_name="real", storage=url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert all(t.user_attrs["metric_name"] == "eval_loss" and "accuracy" in t.user_attrs["trajectory"][-1]
               for t in study.trials)
