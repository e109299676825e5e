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


def test_smoke_run_writes_the_table_and_every_engine_trains_the_same_model(tmp_path):
    docs, raw = tmp_path / "benchmarks.md", tmp_path / "gpu.json"
    docs.write_text("# Benchmarks\n\nkept\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--device", "cpu",
                           "--variants", "bf16", "bf16-packed", "trainer-bf16", "--parts", "lora", "memory",
                           "language-bo", "--memory-trials", "3", "--docs", str(docs), "--json", str(raw)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(raw.read_text())
    rows = {row["variant"]: row for row in result["rows"]}
    assert set(rows) == {"bf16", "bf16-packed", "trainer-bf16"}
    assert rows["bf16"]["tokens"] == rows["bf16-packed"]["tokens"] == rows["trainer-bf16"]["tokens"] > 0
    # the same base, data, schedule and precision: after a few small steps all evaluate to about the same loss
    assert rows["bf16"]["eval_loss"] == pytest.approx(rows["trainer-bf16"]["eval_loss"], rel=1e-3)
    assert rows["bf16-packed"]["eval_loss"] == pytest.approx(rows["bf16"]["eval_loss"], rel=1e-3)
    assert [m["trial"] for m in result["memory"]] == [0, 1, 2] and result["memory_worst"]["resident"] < 0.05
    assert result["language_bo"]["pool_size"] == 320 and len(result["language_bo"]["suggestion_s"]) == 2
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nkept\n") and "<!-- gpu-scale:start -->" in text
    assert "| tiny | bf16 | lmtune |" in text and "bf16 / trainer-bf16 tokens/s" in text
    assert "| trial | rank | batch |" in text and "one-time pool pass" in text
