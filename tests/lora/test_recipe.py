"""What ``lmtune lora`` leaves for people: a complete recipe that reproduces the best trial, an adapter that loads
with PEFT and predicts class names, a model card, a report, named metrics, and trials that learned nothing flagged."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from lmtune.llm import DEFAULT_ENCODER_HUB_ID, default_encoder_path
from tests.report.chromium import render

RUN = ["--max-length", "16", "--proxy-fraction", "0.5", "--space", "lora-small", "--sampler", "random"]


def lmtune(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    result = subprocess.run([sys.executable, "-m", "lmtune.cli", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One small search with the final retrain: 2 configs on 120 two-class reviews."""
    folder = tmp_path_factory.mktemp("recipe")
    rows = [f"{'good' if i % 2 else 'bad'} review number {i},{'pos' if i % 2 else 'neg'}" for i in range(120)]
    (folder / "reviews.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    result = lmtune("lora", *RUN, "--dataset", "reviews.csv", "--trials", "2", "--study-name", "rec",
                    "--output-dir", "out", cwd=folder)
    return folder, result, json.loads((folder / "out" / "results.json").read_text())


def test_results_json_holds_the_complete_recipe_of_the_best_config(run):
    folder, _, results = run
    recipe, best = results["recipe"], results["best"]
    assert recipe["base_model"] == {"hub_id": DEFAULT_ENCODER_HUB_ID, "path": default_encoder_path(), "as_given": None}
    assert recipe["data"]["dataset"].endswith("reviews.csv") and recipe["data"]["labels"] == ["neg", "pos"]
    assert recipe["data"]["rows"] == {"train": 84, "validation": 12, "test": 24} and recipe["data"]["proxy_examples"]
    lora, training = recipe["lora"], recipe["training"]
    hp = best["hyperparams"]
    assert (lora["r"], lora["lora_alpha"], lora["lora_dropout"], lora["variant"]) == (
        hp["rank"], hp["alpha"], hp["dropout"], hp["variant"])
    adapter_config = json.loads((folder / "out" / "adapter" / "adapter_config.json").read_text())
    assert lora["target_modules"] == sorted(adapter_config["target_modules"]) == ["query", "value"]
    assert lora["task_type"] == adapter_config["task_type"] == "SEQ_CLS"
    assert (adapter_config["r"], adapter_config["lora_alpha"]) == (hp["rank"], hp["alpha"])
    assert training["learning_rate"] == hp["learning_rate"] and training["batch_size"] == hp["batch_size"]
    assert (training["max_length"], training["epochs"], training["seed"]) == (16, 1.0, 0)
    assert (training["warmup_ratio"], training["lr_scheduler"], training["optimizer"]) == (0.03, "cosine", "AdamW")
    assert recipe["lmtune"] == yaml.safe_load((folder / "out" / "best.yaml").read_text())
    assert recipe["lmtune"]["space"]["params"] == hp


def test_best_yaml_reproduces_the_best_trials_score_for_the_same_seed(run):
    folder, _, results = run
    lmtune("lora", "--config", "out/best.yaml", "--no-final-train", cwd=folder)
    again = optuna.load_study(study_name="rec-best", storage="sqlite:///" + str(folder / "lmtune.db"))
    assert len(again.trials) == 1 and again.trials[0].value == results["best"]["proxy_metric"]
    original = optuna.load_study(study_name="rec", storage="sqlite:///" + str(folder / "lmtune.db"))
    # both rank by validation loss (the default proxy metric); accuracy is recorded in each trajectory
    assert again.metric_names == original.metric_names == ["eval_loss"]


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    """A Hugging Face hub cache holding the default base model, as on a machine that downloaded it once."""
    cache = tmp_path_factory.mktemp("hub")
    repo = cache / ("models--" + DEFAULT_ENCODER_HUB_ID.replace("/", "--"))
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for file in Path(default_encoder_path()).iterdir():
        (repo / "snapshots" / ("0" * 40) / file.name).symlink_to(file)
    return cache


def python(code: str, cache: Path, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=cwd,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_the_readme_snippet_trains_the_recipe_with_plain_transformers_and_peft(run, hub_cache):
    folder, _, _ = run
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "recipe = json.load" in block)
    out = python(code.replace("lmtune-out/demo/results.json", "out/results.json"), hub_cache, folder)
    assert "'eval_loss'" in out.stdout


def test_adapter_names_its_base_by_hub_id_and_loads_with_the_model_cards_own_snippet(run, hub_cache):
    folder, _, results = run
    adapter = folder / "out" / "adapter"
    stored = json.loads((adapter / "adapter_config.json").read_text())
    assert stored["base_model_name_or_path"] == DEFAULT_ENCODER_HUB_ID
    assert json.loads((adapter / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}
    card = (adapter / "README.md").read_text()
    assert f"base_model: {DEFAULT_ENCODER_HUB_ID}" in card and "reviews.csv" in card
    assert f"{results['final']['test_metric']:.4f}" in card and "r " in card and "query, value" in card
    # the card's code, verbatim, where the base model comes from the hub (cache)
    code = re.search(r"```python\n(.*?)```", card, re.S)[1].replace("path/to/this/folder", str(adapter))
    texts = ["good review number 1001", "bad review number 1000"]
    out = python(code.replace('["some text"]', repr(texts[:1])), hub_cache, folder)
    assert out.stdout.strip() in {"neg", "pos"}

    # and directly with PEFT on the local base: predictions are class names, as good as lmtune's test score
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(adapter)
    base = AutoModelForSequenceClassification.from_pretrained(default_encoder_path(), config=config)
    model = PeftModel.from_pretrained(base, adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    with torch.no_grad():
        logits = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits
    names = [model.config.id2label[int(i)] for i in logits.argmax(-1)]
    assert set(names) <= {"neg", "pos"}
    if results["final"]["test_metric"] == 1.0:
        assert names == ["pos", "neg"]


def test_report_is_written_next_to_the_results_and_renders(run):
    folder, result, _ = run
    assert f"report: {Path('out') / 'report.html'}" in result.stdout
    checked = render(folder / "out" / "report.html")
    # history, learning curves, parallel coordinates; importances only when the trials' scores differ
    assert checked["errors"] == [] and checked["figures"] == checked["drawn"] >= 3


def test_a_constant_prediction_trial_is_flagged_as_learning_nothing(tmp_path):
    """Every row has the same text, so any model predicts one class for all: its accuracy is at most the
    majority-class rate, and the progress line, results.json, summary.md and the report say it learned nothing."""
    rows = ["the same words every time,a"] * 60 + ["the same words every time,b"] * 20
    (tmp_path / "same.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    result = lmtune("lora", *RUN, "--dataset", "same.csv", "--trials", "1", "--no-final-train", "--output-dir", "out",
                    "--max-length", "8", cwd=tmp_path)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    constant = results["constant_score"]
    # trials are ranked by validation loss; their accuracy is what is compared with the constant answer
    assert results["metric_name"] == "eval_loss" and constant["metric"] == "accuracy"
    assert constant["value"] >= 0.5 and results["trials"][0]["metrics"]["accuracy"] <= constant["value"]
    assert f"learned nothing: no better than answering 'a' for every example (the majority-class rate, " \
           f"{constant['value']:.4f})" in result.stderr  # the trial's progress line
    assert "learned nothing" in result.stdout  # on the best trial's line too
    assert results["trials"][0]["learned_nothing"] and results["best"]["learned_nothing"]
    assert "learned nothing" in (tmp_path / "out" / "summary.md").read_text()
    assert "learned nothing" in (tmp_path / "out" / "report.html").read_text()
