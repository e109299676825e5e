"""The ``lmtune`` command end to end: bad input, interrupt and resume, a full small run."""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

FAST = ["--max-length", "32", "--proxy-fraction", "0.03", "--proxy", "steps:4", "--space", "lora-small", "--sampler",
        "random"]


def lmtune(*args: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LMTUNE_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "lmtune.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, **kwargs)


def stored_trials(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
        return conn.execute("select count(*) from trials").fetchone()[0] if "trials" in tables else 0


@pytest.mark.parametrize(
    ("args", "files", "field"),
    [
        (["--space", "space.yaml"], {"space.yaml": "params: {rank: [4], momentum: [0.9]}\n"}, "momentum"),
        (["--space", "space.yaml"], {"space.yaml": "params: {rank: {type: int, low: 0, high: 4}}\n"}, "rank"),
        (["--variant", "qlora"], {}, "variant"),
        (["--proxy-fraction", "1.5"], {}, "proxy_fraction"),
        (["--config", "run.yaml"], {"run.yaml": "trials: [3\n"}, "config"),
        (["--config", "run.yaml"], {"run.yaml": "trials: 3\nlearning_rate: 0.1\n"}, "learning_rate"),
        (["--dataset", "missing.csv"], {}, "dataset"),
        (["--sampler", "simulated-annealing"], {}, "sampler"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_field_and_stores_nothing(tmp_path, args, files, field):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    result = lmtune("lora", *args, "--trials", "2", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"error: {field}:"), message
    assert not (tmp_path / "lmtune.db").exists()  # not even an empty database


def test_interrupted_run_resumes_keeps_finished_trials_and_reaches_the_count(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "lmtune.cli", "lora", *FAST, "--trials", "4", "--no-final-train"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while stored_trials(tmp_path / "lmtune.db") < 2 and time.time() < deadline:  # one finished, one running
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err

    with sqlite3.connect(tmp_path / "lmtune.db") as conn:
        before = conn.execute("select number, state from trials order by number").fetchall()
    assert ("COMPLETE" in {s for _, s in before}) and ("FAIL" in {s for _, s in before})

    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Resuming study" in result.stderr
    with sqlite3.connect(tmp_path / "lmtune.db") as conn:
        after = conn.execute("select number, state from trials order by number").fetchall()
        retried = conn.execute("select value_json from trial_user_attributes where key='retry_of'").fetchall()
    finished_before = [(n, s) for n, s in before if s in ("COMPLETE", "FAIL")]
    assert [row for row in after if row in finished_before] == finished_before  # kept as they were
    assert len(retried) == 1
    done = [n for n, s in after if s == "COMPLETE"]
    assert len(done) == 4 and len(after) == 5  # 4 counted + the interrupted one, replaced by its retry


def write_reviews(folder: Path, count: int = 120) -> str:
    rows = [f"{'good' if i % 2 else 'bad'} review number {i},{'pos' if i % 2 else 'neg'}" for i in range(count)]
    (folder / "reviews.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    return "reviews.csv"


def test_full_small_run_writes_results_summary_and_adapter(tmp_path):
    write_reviews(tmp_path)
    result = lmtune("lora", *FAST, "--dataset", "reviews.csv", "--proxy-fraction", "0.5", "--trials", "2",
                    "--study-name", "small", "--output-dir", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "best config:" in result.stdout and "test accuracy:" in result.stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(results["trials"]) == 2
    assert 0.0 <= results["final"]["test_metric"] <= 1.0
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").exists()
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "## Best config" in summary and "## Trials" in summary


def test_language_bo_sampler_runs_end_to_end_on_lora_small(tmp_path):
    data = write_reviews(tmp_path)
    result = lmtune("lora", *FAST, "--dataset", data, "--proxy-fraction", "0.5", "--sampler", "language-bo",
                    "--startup-trials", "2", "--trials", "4", "--no-final-train", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "lmtune.db") as conn:
        params = conn.execute("select trial_id, param_name, param_value from trial_params").fetchall()
        states = [s for (s,) in conn.execute("select state from trials")]
    assert states == ["COMPLETE"] * 4
    configs = {tid: tuple(sorted((n, v) for t, n, v in params if t == tid)) for tid, _, _ in params}
    assert len(set(configs.values())) == 4  # no config proposed twice
    assert list((tmp_path / "cache").rglob("*"))  # the pool's embeddings were cached on disk


def test_language_bo_plus_remembers_an_earlier_study_by_default_and_spends_only_its_own_budget(tmp_path):
    """``memory`` auto: the earlier study of the same storage is remembered (and named in the summary), the new
    study runs its own budget of distinct configs, and the remembered results stay where they were."""
    data = write_reviews(tmp_path)
    common = (*FAST, "--dataset", data, "--proxy-fraction", "0.5", "--no-final-train")
    past = lmtune("lora", *common, "--trials", "5", "--study-name", "past", cwd=tmp_path)
    assert past.returncode == 0, past.stderr
    new = lmtune("lora", *common, "--sampler", "language-bo+", "--startup-trials", "2", "--trials", "4",
                 "--study-name", "new", "--output-dir", "new", cwd=tmp_path)
    assert new.returncode == 0, new.stderr
    with sqlite3.connect(tmp_path / "lmtune.db") as conn:
        rows = conn.execute("select s.study_name, t.state, count(*) from trials t join studies s "
                            "on s.study_id = t.study_id group by s.study_name, t.state").fetchall()
        params = conn.execute("select t.trial_id, p.param_name, p.param_value from trial_params p join trials t "
                              "on t.trial_id = p.trial_id join studies s on s.study_id = t.study_id "
                              "where s.study_name = 'new'").fetchall()
    assert sorted(rows) == [("new", "COMPLETE", 4), ("past", "COMPLETE", 5)]
    configs = {tid: tuple(sorted((n, v) for t, n, v in params if t == tid)) for tid, _, _ in params}
    assert len(set(configs.values())) == 4
    memory = json.loads((tmp_path / "new" / "results.json").read_text())["memory"]
    assert memory["requested"] == ["auto"] and [m["name"] for m in memory["used"]] == ["past"]
    # three start-up trials (the memory's best config, two design points), then a fit that judges the memory
    assert memory["gate"]["sources"] == ["past"] and memory["gate"]["kept"] in (True, False)
    assert "- memory: `past` (5 results); the memory gate " in (tmp_path / "new" / "summary.md").read_text()


def test_proxy_check_prints_both_correlations_the_cost_and_a_recommendation(tmp_path):
    data = write_reviews(tmp_path, 80)
    result = lmtune("lora", "--dataset", data, "--max-length", "16", "--proxy", "steps:6", "--proxy-fraction", "0.25",
                    "proxy-check", "--configs", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("config ") == 3
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "proxy (6 steps on 14 examples, 25%) vs full (56 examples) over 3 configs:", lines
    for metric, line in zip(("accuracy", "eval_loss (ranks trials)"), lines[1:3], strict=True):
        match = re.fullmatch(rf"  proxy {re.escape(metric)} vs full accuracy: (?:Pearson (\S+), Spearman (\S+)|"
                             r"undefined .*)", line)
        assert match, line
        assert match[1] is None or (-1 <= float(match[1]) <= 1 and -1 <= float(match[2]) <= 1)
    # 56 rows: a full run is 7 steps at batch 8 and 4 at batch 16, so 6 steps cost 86% or 150%
    assert re.fullmatch(r"  a trial costs \d+% of a full run's training examples, \d+% of its time", lines[3]), lines[3]
    assert lines[4].startswith("recommendation: ") and "`" not in lines[4], lines[4]  # fields read as flags
    assert "train longer" not in lines[4] or "--proxy steps:" in lines[4], lines[4]


def test_fields_that_library_text_names_read_as_the_commands_flags():
    from lmtune.cli.options import as_flags, flags_of
    from lmtune.lora.config import LoraRunConfig
    from lmtune.runtime.worker import WorkerConfig

    text = "use `sampler` language-bo+ or another `study_name`; `lmtune worker` and `nothing` stay"
    assert as_flags(text, flags_of(LoraRunConfig)) == (
        "use --sampler language-bo+ or another --study-name; `lmtune worker` and `nothing` stay")
    assert as_flags("join `study`", flags_of(WorkerConfig)) == "join --study"  # a field's own first flag
