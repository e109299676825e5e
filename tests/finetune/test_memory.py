"""Memory that stays flat: one worker process runs 20 trials of different ranks and batch sizes on one kept base;
the resident memory after each trial is within 5% of the first trial's, and each config's peak within 5% of that
config's first trial (``benchmarks/memory_trials.py``, on the CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lmtune.finetune.memory import peak_resident_bytes, reset_peak_resident, resident_bytes

ROOT = Path(__file__).resolve().parents[2]


def test_twenty_trials_in_one_worker_keep_resident_memory_and_peaks_flat(tmp_path):
    out = tmp_path / "memory.json"
    # a fixed mmap threshold: every large tensor is a mapping of its own, so a peak measures live memory rather than
    # the layout of glibc's heap (benchmarks/memory_trials.py)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory_trials.py"), "--trials", "20",
                           "--steps", "2", "--max-length", "96", "--rows", "128", "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    records = result["records"]
    assert len(records) == 20 and len({(r["rank"], r["batch_size"]) for r in records}) == 5
    assert result["worst"]["resident"] < 0.05 and result["worst"]["peak_resident"] < 0.05, result["worst"]
    resident = [r["resident"] for r in records]
    assert max(resident[-5:]) <= max(resident[:5]) * 1.01  # no upward drift over the run
    peaks = {r["batch_size"]: r["peak_resident"] for r in records}
    assert peaks[32] > peaks[4]  # the peak is the trial's own: a larger batch peaks higher


def test_the_peak_of_resident_memory_can_be_reset():
    if not reset_peak_resident():
        import pytest

        pytest.skip("this system cannot reset the peak of resident memory (Linux can)")
    block = bytearray(b"x" * (64 * 2**20))  # written, so resident
    peak = peak_resident_bytes()
    del block
    assert reset_peak_resident()
    assert peak_resident_bytes() < peak and resident_bytes() <= peak_resident_bytes()
