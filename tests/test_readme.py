"""The README's Python examples run offline as written: the recipe script after a LoRA run, ``lmtune.tune_lora`` with
its progress in the log and the files of the command, and the standalone ``LoraObjective`` with ``lmtune lora``'s
defaults. Each block is read from README.md; where a test makes it smaller (fewer trials, a small CSV instead of BBC
News), the substitution is named here and must match the README's text."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": str(ROOT), "TRANSFORMERS_VERBOSITY": "error"}


def readme_block(first_line: str) -> str:
    """The README's ```python block that starts with ``first_line``."""
    blocks = ROOT.joinpath("README.md").read_text().split("```python\n")[1:]
    (block,) = [b.split("```")[0] for b in blocks if b.startswith(first_line)]
    return block


def smaller(code: str, substitutions: dict[str, str]) -> str:
    for old, new in substitutions.items():
        assert old in code, f"the README no longer says {old!r}"
        code = code.replace(old, new)
    return code


def reviews(folder: Path) -> str:
    rows = [f"{'good' if i % 2 else 'bad'} review {i},{'pos' if i % 2 else 'neg'}" for i in range(60)]
    (folder / "reviews.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    return "reviews.csv"


def run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=ENV, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_the_recipe_script_trains_the_best_config_offline_after_a_run(tmp_path):
    """After ``lmtune lora`` (default model, a small CSV), the README's transformers + PEFT script as written: the
    base model loads from its local copy, not the Hub."""
    data = reviews(tmp_path)
    command = [sys.executable, "-m", "lmtune.cli", "lora", "--dataset", data, "--trials", "1", "--max-length", "16",
               "--study-name", "demo", "--output-dir", "lmtune-out/demo"]
    lora = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900)
    assert lora.returncode == 0, lora.stderr[-3000:]
    result = run(readme_block("import json\nimport os\n"), tmp_path)
    assert "'eval_loss'" in result.stdout and (tmp_path / "trained").is_dir()


def test_the_python_api_logs_its_trials_writes_the_commands_files_and_the_objective_has_its_defaults(tmp_path):
    data = reviews(tmp_path)
    code = smaller(readme_block("import logging\n"), {
        'lmtune.tune_lora(trials=20, sampler="gp", space="lora-small")':
            f'lmtune.tune_lora(trials=2, sampler="gp", space="lora-small", dataset="{data}", max_length=16)',
        'lmtune.load_dataset("bbc-news")': f'lmtune.load_dataset("{data}")',
        "n_trials=10": "n_trials=1"})
    code += ("\nprint('OBJECTIVE', study.direction.name, study.trials[0].user_attrs['metric_name'], "
             "len(objective.train_rows) == len(splits.train), objective.plan.rule)\n")
    result = run(code, tmp_path)
    assert "trial 0 [1/2] eval_loss" in result.stderr and "trial 1 [2/2]" in result.stderr  # as the CLI prints
    assert "`startup_trials` 5 >= `trials` 2" in result.stderr  # gp never chose a trial: said at the start
    out = tmp_path / "lmtune-out" / "lmtune-lora"
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["best.yaml", "report.html", "results.json",
                                                                      "summary.md"]
    assert "lmtune-out/lmtune-lora/report.html" in result.stdout
    assert "OBJECTIVE MINIMIZE eval_loss True 30% of each config's full run (default)" in result.stdout
