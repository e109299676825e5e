"""``lmtune lora``'s hardware options: refused in one line before anything is stored, and a run that uses them."""

from __future__ import annotations

import json

import pytest
import torch

from lmtune.finetune.device import has_bitsandbytes
from lmtune.lora.config import LoraRunConfig
from tests.cli.test_bad_input import TWO_CLASSES, run, snapshot

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
QUANTIZE_WORDS = "needs a CUDA device" if has_bitsandbytes() else "needs the bitsandbytes package"

CASES = [
    (["--quantize", "4bit"], "quantize", QUANTIZE_WORDS),
    (["--quantize", "8bit"], "quantize", "4bit"),
    (["--precision", "fp16"], "precision", "fp16 needs a CUDA device"),
    (["--device", "cuda"], "device", "no cuda device"),
    (["--device", "cuda:1", "--sampler", "language-bo"], "device", "no cuda device"),
]


@NO_CUDA
@pytest.mark.parametrize(("args", "field", "words"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_options_this_machine_cannot_honour_are_one_line_errors(args, field, words, tmp_path, capsys, monkeypatch):
    (tmp_path / "d.csv").write_text(TWO_CLASSES)
    before = snapshot(tmp_path)
    code, err = run(tmp_path, ["lora", "--dataset", "d.csv", "--storage", "sqlite:///s.db", *args], capsys,
                    monkeypatch)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}: ") and words in lines[0], err
    assert snapshot(tmp_path) == before


def test_pissa_cannot_be_searched_on_a_4bit_base(tmp_path, capsys, monkeypatch):
    (tmp_path / "d.csv").write_text(TWO_CLASSES)
    monkeypatch.setattr("lmtune.finetune.device.has_bitsandbytes", lambda: True)
    monkeypatch.setattr("lmtune.finetune.device.resolve_device", lambda device=None: torch.device("cuda"))
    code, err = run(tmp_path, ["lora", "--dataset", "d.csv", "--storage", "sqlite:///s.db", "--quantize", "4bit",
                               "--precision", "fp32", "--variant", "search"], capsys, monkeypatch)
    assert code == 2 and err.startswith("error: quantize: variant pissa cannot train on a 4-bit base"), err
    assert not (tmp_path / "s.db").exists()


def test_the_options_reach_training_and_the_worker_job(tmp_path, capsys, monkeypatch):
    """A CPU run in bf16 with length grouping and gradient checkpointing; the device stays with this process."""
    (tmp_path / "d.csv").write_text(TWO_CLASSES)
    args = ["lora", "--dataset", "d.csv", "--storage", "sqlite:///s.db", "--trials", "2", "--max-length", "16",
            "--proxy-fraction", "0.5", "--sampler", "random", "--no-final-train", "--device", "cpu", "--precision",
            "bf16", "--group-by-length", "--gradient-checkpointing", "--output-dir", "out"]
    code, err = run(tmp_path, args, capsys, monkeypatch)
    assert code in (0, None), err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["finished"] == 2 and all(t["state"] == "COMPLETE" for t in results["trials"])
    from lmtune.lora.search import job_config

    job = job_config(LoraRunConfig(precision="bf16", device="cpu", group_by_length=True))
    assert job["precision"] == "bf16" and job["group_by_length"] and "device" not in job
