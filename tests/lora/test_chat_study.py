"""A chat-format study end to end, offline: ``lmtune lora`` on the committed tiny chat model (agent-lm) and chat rows;
its adapter loads in plain transformers + PEFT and scores what lmtune said it scores, and the recipe says which
template and which tokens carried the loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

from lmtune.finetune.data import load_dataset

ROOT = Path(__file__).resolve().parents[2]
CHAT = ROOT / "tests" / "data" / "chat.jsonl"
#: agent-lm's ChatML template with the assistant's text marked, so transformers itself gives the assistant mask.
MARKED = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}{% generation %}"
          "{{ m['content'] }}<|im_end|>{% endgeneration %}{% else %}{{ m['content'] }}<|im_end|>{% endif %}"
          "{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def plain_loss(adapter: Path, rows: list[dict]) -> float:
    """Mean loss per assistant token of the saved adapter on ``rows``, computed by transformers alone."""
    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter))
    total, count = 0.0, 0
    for row in rows:
        encoded = tokenizer.apply_chat_template(row["messages"], chat_template=MARKED, return_dict=True,
                                                return_assistant_tokens_mask=True)
        ids = torch.tensor([encoded["input_ids"]])
        labels = torch.tensor([[t if m else -100 for t, m in zip(encoded["input_ids"], encoded["assistant_masks"],
                                                                 strict=True)]])
        scored = int((labels[:, 1:] != -100).sum())
        with torch.no_grad():
            total += model(input_ids=ids, labels=labels).loss.item() * scored
        count += scored
    return total / count


def test_a_chat_study_runs_offline_and_its_adapter_loads_in_transformers_and_peft(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "lmtune.cli", "lora", "--model", "agent-lm", "--dataset", str(CHAT),
                           "--task", "causal", "--trials", "2", "--storage", f"sqlite:///{tmp_path / 's.db'}",
                           "--output-dir", str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    loss = results["recipe"]["loss"]
    assert loss["format"] == "chat" and loss["on"] == "assistant"
    assert loss["tokens"].startswith("each assistant turn's tokens and its end-of-turn token")
    template = (ROOT / "lmtune" / "models" / "agent-lm" / "chat_template.jinja").read_text()
    adapter = Path(results["final"]["adapter_dir"])
    assert (adapter / "chat_template.jinja").read_text() == template  # the template trained with travels along
    assert loss["chat_template"]["method"] == "prefixes" and len(loss["chat_template"]["sha256"]) == 64
    assert yaml.safe_load((tmp_path / "out" / "best.yaml").read_text())["loss_on"] == "assistant"
    trl = yaml.safe_load((tmp_path / "out" / "best.trl.yaml").read_text())  # TRL's conversational rows, its mask
    assert trl["assistant_only_loss"] is True and trl["completion_only_loss"] is False
    first = json.loads((tmp_path / "out" / "trl-data" / "train.jsonl").read_text().splitlines()[0])
    assert [turn["role"] for turn in first["messages"]][-1] == "assistant"
    card = (adapter / "README.md").read_text()
    assert "- loss: each assistant turn's tokens" in card and loss["chat_template"]["sha256"][:12] in card

    test_rows = load_dataset(str(CHAT), task="causal", seed=0).test
    assert plain_loss(adapter, test_rows) == pytest.approx(results["final"]["test_loss"], rel=1e-4)
