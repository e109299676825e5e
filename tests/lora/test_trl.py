"""For a causal task the best config is also a TRL SFT run: ``best.trl.yaml``, what ``trl sft --config`` reads."""

import json
import subprocess
import sys

import pytest
import yaml

import lmtune


@pytest.fixture(scope="module")
def causal_run(tmp_path_factory):
    """One trial of lmtune's arithmetic model on 48 addition problems, retrained: the files of a causal run."""
    folder = tmp_path_factory.mktemp("trl")
    rows = [{"prompt": f"{a}+{b}=", "response": str(a + b)} for a in range(6, 14) for b in range(2, 8)]
    (folder / "sums.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = lmtune.tune_lora(model="arith-lm", dataset=str(folder / "sums.jsonl"), trials=1, max_length=16,
                              storage=f"sqlite:///{folder / 'trl.db'}", study_name="sums", output_dir=folder / "out")
    return folder / "out", result


def test_a_causal_run_writes_the_best_config_as_a_trl_sft_config(causal_run):
    out, result = causal_run
    config = yaml.safe_load((out / "best.trl.yaml").read_text())
    recipe = result.recipe
    assert config["use_peft"] is True and config["lora_r"] == recipe["lora"]["r"]
    assert config["lora_alpha"] == recipe["lora"]["lora_alpha"]
    assert config["lora_dropout"] == recipe["lora"]["lora_dropout"]
    assert config["lora_target_modules"] == recipe["lora"]["target_modules"]
    assert config["learning_rate"] == recipe["training"]["learning_rate"]
    assert config["per_device_train_batch_size"] == recipe["training"]["batch_size"]
    assert (config["lr_scheduler_type"], config["warmup_steps"]) == ("cosine", 0.03)
    assert (config["max_length"], config["seed"], config["num_train_epochs"]) == (16, 0, 1.0)
    assert (config["use_cpu"], config["bf16"]) == (True, False)  # this machine has no GPU
    assert config["model_name_or_path"] == recipe["base_model"]["path"]  # loads offline
    train = [json.loads(line) for line in (out / "trl-data" / "train.jsonl").read_text().splitlines()]
    assert len(train) == recipe["data"]["rows"]["train"] and set(train[0]) == {"prompt", "completion"}


def test_a_classifier_run_writes_no_trl_config(tmp_path):
    """TRL trains causal LMs; a classification run has no best.trl.yaml (the lora tests' runs check the rest)."""
    from lmtune.lora.report import write_trl

    assert write_trl(tmp_path, {"task": "classification"}, []) == [] and list(tmp_path.iterdir()) == []


def test_trl_parses_the_config_into_its_own_arguments_and_trains_a_few_steps(causal_run):
    trl = pytest.importorskip("trl", reason="TRL is not installed (pip install trl; make test's dev extra has it)")
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, SFTConfig, TrlParser

    out, result = causal_run
    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig))
    script, training, model, _ = parser.parse_args_and_config(["--config", str(out / "best.trl.yaml")])
    assert model.use_peft and model.lora_r == result.recipe["lora"]["r"]
    assert model.lora_target_modules == result.recipe["lora"]["target_modules"]
    assert training.learning_rate == result.recipe["training"]["learning_rate"]
    assert training.lr_scheduler_type == "cosine" and training.completion_only_loss
    assert script.dataset_name == str((out / "trl-data").resolve())
    run = subprocess.run([sys.executable, "-m", "trl.scripts.sft", "--config", str(out / "best.trl.yaml"),
                          "--max_steps", "3"], capture_output=True, text=True, timeout=600,
                         cwd=out, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                                       "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "trl-adapter" / "adapter_model.safetensors").is_file(), trl.__version__
