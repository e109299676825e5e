"""``lmtune lora`` and ``lmtune bench samplers`` run one search: the same sampler, encoding and configs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from lmtune.bench.compare import bench_samplers
from lmtune.bench.table import Table
from tests.bench.lookup_objective import ARITH_SFT

ROOT = Path(__file__).resolve().parents[2]
BUDGET = 12


def lmtune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path, "LMTUNE_CACHE_DIR": str(cwd / "cache")}
    result = subprocess.run([sys.executable, "-m", "lmtune.cli", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.parametrize("sampler", ["gp", "tpe"])
def test_lmtune_lora_and_the_benchmark_replay_propose_the_same_configs(tmp_path, monkeypatch, sampler):
    """The study ``lmtune lora --no-run`` creates, run by ``lmtune worker`` with an objective that looks each config
    up in the arith-sft table, tries the configs that ``lmtune bench samplers`` replaying that table tries, in the
    same order."""
    table = Table.load(ARITH_SFT)
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(table.grid.to_dict(), sort_keys=False))  # the same order
    storage = f"sqlite:///{tmp_path / 'lora.db'}"
    lmtune("lora", "--no-run", "--space", "grid.yaml", "--dataset", "arith-sub3", "--model", "arith-lm", "--task",
           "causal", "--max-length", "16", "--sampler", sampler, "--trials", str(BUDGET), "--seed", "0",
           "--storage", storage, "--study-name", "search", cwd=tmp_path)
    lmtune("worker", "--study", "search", "--storage", storage, "--objective",
           "tests.bench.lookup_objective:arith_sft", cwd=tmp_path)
    looked_up = []  # what the replay asks the table for, in order (a few metrics of the table are tied)
    lookup = Table.lookup
    monkeypatch.setattr(Table, "lookup", lambda self, params: looked_up.append(params) or lookup(self, params))
    bench_samplers(table=[ARITH_SFT], samplers=[sampler], seeds=1, budget=BUDGET, output=tmp_path / "bench")

    trials = sorted(optuna.load_study(study_name="search", storage=storage).trials, key=lambda t: t.number)
    assert [{**t.params, "variant": "lora"} for t in trials] == looked_up
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == BUDGET  # never a config twice
    replayed = json.loads((tmp_path / "bench" / "runs.jsonl").read_text().splitlines()[0])
    assert (replayed["method"], replayed["seed"]) == (sampler, 0)
    assert replayed["values"] == [t.value for t in trials]
