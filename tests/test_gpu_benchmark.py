"""``benchmarks/gpu.py`` runs end to end in its smoke mode (tiny shapes, CPU here), so the GPU run is known to work
up to what only a GPU has (memory statistics, the profiler's kernel times)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_writes_the_table_and_both_engines_train_the_same_model(tmp_path):
    docs, raw = tmp_path / "benchmarks.md", tmp_path / "gpu.json"
    docs.write_text("# Benchmarks\n\nkept\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--device", "cpu",
                           "--precisions", "bf16", "--docs", str(docs), "--json", str(raw)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(raw.read_text())
    rows = {row["engine"]: row for row in result["rows"]}
    assert set(rows) == {"lmtune", "Trainer + PEFT"}
    assert rows["lmtune"]["tokens"] == rows["Trainer + PEFT"]["tokens"] > 0
    # the same base, data, schedule and precision: after a few small steps both evaluate to about the same loss
    assert rows["lmtune"]["eval_loss"] == pytest.approx(rows["Trainer + PEFT"]["eval_loss"], rel=1e-3)
    assert result["language_bo"]["pool_size"] == 320 and len(result["language_bo"]["suggestion_s"]) == 2
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nkept\n") and "<!-- gpu:start -->" in text
    assert "| tiny | bf16 | lmtune |" in text and "lmtune / Trainer throughput" in text and "one-time pool pass" in text
