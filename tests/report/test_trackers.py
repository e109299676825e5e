"""``track``: every trial a run of MLflow (a real tracking server on 127.0.0.1) and of W&B (offline run files read
back), with its parameters, its metrics at every evaluation and its state; a final run with the adapter and
results.json as artifacts."""

import glob
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

import lmtune

mlflow = pytest.importorskip("mlflow", reason="the track extra (mlflow) is not installed")
wandb = pytest.importorskip("wandb", reason="the track extra (wandb) is not installed")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` on a free port of 127.0.0.1 with a SQLite backend; its URI."""
    folder = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{folder / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1"], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while True:
        try:
            if urllib.request.urlopen(f"{uri}/health", timeout=5).read().strip() == b"OK":
                break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"mlflow server did not start: {server.stderr.read().decode()[-2000:]}")
            time.sleep(1)
    yield uri
    server.terminate()
    server.wait(timeout=60)


def wandb_records(run_file: str) -> list:
    """The records of a W&B offline run file (``run-<id>.wandb``): W&B's LevelDB-style log of 32 KiB blocks, each
    record a 7-byte header (CRC32, length, type: full, first, middle, last) and a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, records, pending = Path(run_file).read_bytes(), 32768, 7, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            pos += (block - pos % block) % block
        elif kind in (1, 2):
            pending = chunk
        else:
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def wandb_runs(folder: Path) -> dict[str, dict]:
    """Each offline run by name: its config, its history rows (by step) and its summary, as W&B stored them."""
    runs = {}
    for run_file in glob.glob(str(folder / "wandb" / "offline-run-*" / "run-*.wandb")):
        run = {"config": {}, "history": {}, "summary": {}}
        for record in wandb_records(run_file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run["name"] = record.run.display_name
                run["group"] = record.run.run_group
                run["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "history":
                row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
                run["history"][row["_step"]] = row
            elif kind == "summary":
                run["summary"].update({"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                                       for i in record.summary.update})
        runs[run["name"]] = run
    return runs


class EachConfigOnce(optuna.samplers.BruteForceSampler):
    """Optuna's brute force without its ``study.stop()`` once every config is tried (lmtune's loop counts trials)."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def test_lora_trials_are_runs_of_mlflow_and_wandb_with_params_metrics_and_state(tmp_path, tiny_bert, tokenizer,
                                                                                 mlflow_server, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    model = tmp_path / "tiny-bert"
    tiny_bert.save_pretrained(model)
    tokenizer.save_pretrained(model)
    rows = [f"{'good' if i % 2 else 'bad'} review {i},{'pos' if i % 2 else 'neg'}" for i in range(60)]
    (tmp_path / "reviews.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "space.yaml").write_text("name: two\nparams:\n  rank: [4]\n  alpha_ratio: [2]\n"
                                         "  learning_rate: [0.001, 50.0]\n  batch_size: [8]\n  dropout: 0.0\n")
    storage, out = f"sqlite:///{tmp_path / 'track.db'}", tmp_path / "out"
    result = lmtune.tune_lora(dataset=str(tmp_path / "reviews.csv"), model=str(model),
                              space=str(tmp_path / "space.yaml"), trials=2, max_length=16, storage=storage,
                              study_name="tracked", output_dir=out,
                              sampler=EachConfigOnce(seed=0),
                              track=[f"mlflow:{mlflow_server}", "wandb:lmtune-test"])
    study = optuna.load_study(study_name="tracked", storage=storage)
    states = {t.number: t.state.name for t in study.trials}
    assert sorted(states.values()) == ["COMPLETE", "FAIL"]  # learning rate 50 diverges

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("tracked")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"tracked", "trial 0", "trial 1", "final"}
    parent = runs["tracked"].info.run_id
    for trial in study.trials:
        run = runs[f"trial {trial.number}"]
        assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["lmtune.state"] == trial.state.name
        assert run.info.status == ("FINISHED" if trial.state.name == "COMPLETE" else "FAILED")
        assert float(run.data.params["learning_rate"]) == trial.params["learning_rate"]
        assert run.data.params["alpha"] == "8.0"  # the config as trained, not only alpha_ratio
        losses = trial.user_attrs.get("step_losses") or []
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss_step")] == \
            list(range(1, len(losses) + 1))
        if trial.state.name == "COMPLETE":
            evaluations = [r["step"] for r in trial.user_attrs["trajectory"]]
            assert [m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")] == evaluations
            assert [m.step for m in client.get_metric_history(run.info.run_id, "accuracy")] == evaluations
        else:
            assert run.data.tags["lmtune.reason"].startswith("diverged")
    final = runs["final"]
    assert final.data.metrics["test_accuracy"] == pytest.approx(result.final["test_metric"])
    artifacts = {a.path for a in client.list_artifacts(final.info.run_id)}
    assert artifacts == {"adapter", "results.json"}
    assert "adapter/adapter_model.safetensors" in {a.path for a in client.list_artifacts(final.info.run_id, "adapter")}

    offline = wandb_runs(out)
    assert set(offline) == {"trial 0", "trial 1", "final"} and {r["group"] for r in offline.values()} == {"tracked"}
    for trial in study.trials:
        run = offline[f"trial {trial.number}"]
        assert run["config"]["learning_rate"] == trial.params["learning_rate"] and run["config"]["alpha"] == 8.0
        assert run["summary"]["state"] == trial.state.name
        if trial.state.name == "COMPLETE":
            for record in trial.user_attrs["trajectory"]:
                assert run["history"][record["step"]]["eval_loss"] == pytest.approx(record["eval_loss"])
            assert len([r for r in run["history"].values() if "train_loss_step" in r]) == \
                len(trial.user_attrs["step_losses"])
    assert offline["final"]["summary"]["test_accuracy"] == pytest.approx(result.final["test_metric"])


def test_an_inference_search_is_tracked_too(tmp_path, mlflow_server):
    result = lmtune.tune_inference(local_model="arith-lm", task_size=24, inference_budget=0.02,
                                   optimization_budget=0.05, max_trials=2, storage=f"sqlite:///{tmp_path / 'i.db'}",
                                   study_name="tracked-infer", output_dir=tmp_path / "out",
                                   track=[f"mlflow:{mlflow_server}"])
    study = optuna.load_study(study_name="tracked-infer", storage=f"sqlite:///{tmp_path / 'i.db'}")
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("tracked-infer")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    trials = [t for t in study.trials if t.state.is_finished()]
    assert set(runs) == {"tracked-infer", "final", *(f"trial {t.number}" for t in trials)}
    for trial in trials:
        run = runs[f"trial {trial.number}"]
        assert run.data.params["template"] == trial.user_attrs["template_text"]  # text, not the index
        if trial.state.name == "COMPLETE":
            assert run.data.metrics["success"] == pytest.approx(trial.value)
            assert run.data.metrics["cost_per_instance"] == pytest.approx(trial.user_attrs["cost_per_instance"])
    assert {a.path for a in client.list_artifacts(runs["final"].info.run_id)} == {"results.json"}
    assert result.best is None or runs["final"].data.metrics["test_success"] == result.best["test"]["quality"]


def test_an_unknown_tracker_is_an_input_error_before_any_work(tmp_path):
    run = subprocess.run([sys.executable, "-m", "lmtune.cli", "lora", "--track", "neptune", "--trials", "1"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 2 and run.stderr.startswith("error: track: unknown tracker 'neptune'"), run.stderr
    assert list(tmp_path.iterdir()) == []
