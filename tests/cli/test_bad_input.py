"""Bad input, as a hostile new user types it: one line ``error: <field>: ...``, exit code 2, and nothing written.

Each case runs the real entry point (``lmtune.cli.main``) in this process and compares the folder it ran in
(storage files, output folders) before and after.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from lmtune.cli import main

ONE_CLASS = "text,label\n" + "".join(f"review number {i},good\n" for i in range(30))
TWO_CLASSES = "text,label\n" + "".join(f"{'great' if i % 2 else 'awful'} film {i},{i % 2}\n" for i in range(40))
CHAT = "".join(f'{{"messages": [{{"role": "user", "content": "{i} plus 1?"}}, {{"role": "assistant", "content": '
               f'"{i + 1}"}}]}}\n' for i in range(30))
CURVES = "config name,0,100,200,400,size\nA,3.0,2.5,2.2,2.0,1000\nB,3.2,2.4,2.1,1.9,2000\n"
#: A committed benchmark table.
TABLE = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "arith-sft.json.gz"
#: A table whose grid searches warmup instead of dropout: not a memory for a lora-small study.
OTHER_TABLE = ('{"format": 1, "name": "old", "metric_name": "accuracy", "direction": "maximize", "recipe": {"grid": '
               '{"params": {"rank": {"type": "categorical", "choices": [4]}, "alpha_ratio": {"type": "categorical", '
               '"choices": [1.0]}, "batch_size": {"type": "categorical", "choices": [8]}, "learning_rate": {"type": '
               '"categorical", "choices": [0.001]}, "warmup": {"type": "categorical", "choices": [10]}}}}, "rows": '
               '[{"params": {"rank": 4, "alpha_ratio": 1.0, "batch_size": 8, "learning_rate": 0.001, "warmup": 10}, '
               '"metric": 0.5}]}')

BAD_JOURNAL = '{"op_code": 0, "worker_id": "a"\nnot json\n'
ROOT = Path(__file__).resolve().parents[2]
#: Latin-1 text: 'é' is the byte 0xe9, which UTF-8 never has alone.
LATIN1_YAML = "name: caf\u00e9\n".encode("latin-1")
LATIN1_JSONL = '{"prompt": "caf\u00e9", "answer": "1"}\n'.encode("latin-1")
INFER_LOCAL = ["infer", "--local-model", "arith-lm", "--inference-budget", "1", "--optimization-budget", "1"]


def space(body: str) -> str:
    return f"name: bad\nparams:\n{body}\n  alpha_ratio: [1, 2]\n  dropout: 0.0\n"


#: (case, files to write, arguments, field named, words in the message)
CASES = [
    ("unknown pruner", {}, ["lora", "--pruner", "bogus", "--storage", "sqlite:///s.db"], "pruner", "allowed"),
    ("empty study name", {}, ["lora", "--study-name", "", "--storage", "sqlite:///s.db"], "study_name", "empty"),
    ("unknown sampler", {}, ["lora", "--sampler", "cmaes-ish", "--storage", "sqlite:///s.db"], "sampler", "tpe"),
    ("a rank that is a word", {"space.yaml": space('  rank: "four"')},
     ["lora", "--space", "space.yaml", "--storage", "sqlite:///s.db"], "rank", "whole number"),
    ("a rank of 4.5", {"space.yaml": space("  rank: [4, 4.5]")},
     ["lora", "--space", "space.yaml", "--storage", "sqlite:///s.db"], "rank", "whole number"),
    ("a NaN learning-rate bound", {"space.yaml": space("  rank: [4]\n  learning_rate: {type: float, low: .nan, "
                                                       "high: 0.001, log: true}")},
     ["lora", "--space", "space.yaml", "--storage", "sqlite:///s.db"], "learning_rate", "finite"),
    ("a module the model lacks", {"d.csv": TWO_CLASSES},
     ["lora", "--dataset", "d.csv", "--target-modules", "nonexistent_proj", "--storage", "sqlite:///s.db"],
     "target_modules", "matches no module"),
    ("one class", {"d.csv": ONE_CLASS}, ["lora", "--dataset", "d.csv", "--storage", "sqlite:///s.db"], "label",
     "two or more classes"),
    ("a NaN proxy fraction", {}, ["lora", "--proxy-fraction", "nan", "--storage", "sqlite:///s.db"],
     "proxy_fraction", ""),
    ("a proxy of no steps", {}, ["lora", "--proxy", "steps:0", "--storage", "sqlite:///s.db"], "proxy.steps",
     "at least 1"),
    ("a proxy of steps without a number", {}, ["lora", "--proxy", "steps", "--storage", "sqlite:///s.db"],
     "proxy.steps", "required"),
    ("a proxy of no known kind", {}, ["lora", "--proxy", "fraction:0.5", "--storage", "sqlite:///s.db"], "proxy",
     "share, share:R, steps:N or epochs"),
    ("a metric the task does not have", {"d.csv": TWO_CLASSES},
     ["lora", "--dataset", "d.csv", "--proxy-metric", "exact_match", "--storage", "sqlite:///s.db"], "proxy_metric",
     "eval_loss, accuracy"),
    ("chat rows for a model without a chat template", {"c.jsonl": CHAT},
     ["lora", "--model", "arith-lm", "--dataset", "c.jsonl", "--storage", "sqlite:///s.db"], "dataset",
     "arith-lm has no chat template, so `messages` rows cannot be rendered; pass a --model whose tokenizer has one"),
    ("a chat row that ends with the user", {"c.jsonl": CHAT + '{"messages": [{"role": "user", "content": "hi"}]}\n'},
     ["lora", "--model", "agent-lm", "--dataset", "c.jsonl", "--storage", "sqlite:///s.db"], "dataset",
     "row 31 of c.jsonl (train): the last turn must be the assistant's"),
    ("loss tokens of a classifier", {"d.csv": TWO_CLASSES},
     ["lora", "--dataset", "d.csv", "--loss-on", "all", "--storage", "sqlite:///s.db"], "loss_on", "causal data"),
    ("packing a classifier", {"d.csv": TWO_CLASSES},
     ["lora", "--dataset", "d.csv", "--packing", "--storage", "sqlite:///s.db"], "packing", "causal examples"),
    ("a micro-batch of none", {}, ["lora", "--max-micro-batch", "0", "--storage", "sqlite:///s.db"],
     "max_micro_batch", ""),
    ("an unknown proxy metric", {}, ["lora", "--proxy-metric", "f1", "--storage", "sqlite:///s.db"], "proxy_metric",
     "allowed"),
    ("a budget of no steps", {}, ["lora", "--budget-steps", "0", "--storage", "sqlite:///s.db"], "budget_steps", ""),
    ("status of a missing database", {}, ["status", "--study", "s", "--storage", "sqlite:///missing.db"], "storage",
     "does not exist"),
    ("worker on a missing journal", {}, ["worker", "--study", "s", "--storage", "journal:///missing.log"], "storage",
     "does not exist"),
    ("a worker on a GPU this machine lacks", {}, ["worker", "--study", "s", "--storage", "sqlite:///s.db",
                                                  "--device", "cuda:64"], "device", "'cuda:64'"),
    ("workers on a device that is not one", {}, ["worker", "--study", "s", "--storage", "sqlite:///s.db",
                                                 "--devices", "cpu,gpu0"], "devices", "is not cpu or cuda:N"),
    ("workers on a GPU this machine lacks", {}, ["worker", "--study", "s", "--storage", "sqlite:///s.db",
                                                 "--devices", "cuda:64"], "devices", "'cuda:64'"),
    ("one device and a list of them", {}, ["worker", "--study", "s", "--storage", "sqlite:///s.db", "--device",
                                           "cpu", "--devices", "cpu"], "devices", "--device (this worker) or"),
    ("a read-only database", {}, ["lora", "--storage", "sqlite:///file:ro.db?mode=ro&uri=true", "--no-run"],
     "storage", "readonly"),
    ("memory with a sampler that remembers nothing", {}, ["lora", "--sampler", "tpe", "--memory", "old.json",
                                                          "--storage", "sqlite:///s.db"], "memory",
     "use --sampler auto"),  # the library names the field; the CLI writes it as its flag
    ("a memory table with another space", {"old.json": OTHER_TABLE},
     ["lora", "--sampler", "language-bo+", "--memory", "old.json", "--storage", "sqlite:///s.db"],
     "memory", "only in the source: warmup; only in this study: dropout"),
    ("a memory study in a storage that does not exist", {},
     ["lora", "--sampler", "language-bo+", "--memory", "old-study", "--storage", "sqlite:///s.db"],
     "memory", "no study can be read"),
    ("none beside another memory", {}, ["lora", "--sampler", "language-bo+", "--memory", "none,old-study"], "memory",
     "stands alone"),
    ("an unsorted list of numbers", {"space.yaml": "params: {rank: [8, 4]}\n"}, ["lora", "--space", "space.yaml"],
     "rank", "write [4, 8]"),
    ("a log scale with 0 in it", {"space.yaml": "params: {dropout: {values: [0.0, 0.1], log: true}}\n"},
     ["lora", "--space", "space.yaml"], "dropout", "every value > 0"),
    # issue 28: storage files that are not what they claim, passwords that need encoding, study names as paths
    *[(f"a text file as SQLite storage ({command[0]})", {"one.txt": "x"}, [*command, "--storage", "sqlite:///one.txt"],
       "storage", "one.txt is not an SQLite database")
      for command in (["status", "--study", "s"], ["lora", "--no-run"])],
    *[(f"a malformed journal file ({command[0]})", {"bad.log": BAD_JOURNAL}, [*command, "--storage", "journal:///bad.log"],
       "storage", "bad.log is not a journal file") for command in (["status", "--study", "s"], ["report"],
                                                                  ["worker", "--study", "s"], ["lora", "--no-run"])],
    ("a password with an unencoded '@'", {}, ["status", "--study", "s", "--storage", "postgresql://qa:P@ss:w/rd%41#x@"
                                            "127.0.0.1:18432/qadb"], "storage", "percent-encode"),
    *[(f"a study name that leaves the output folder ({command[0]})", {}, [*command, "--study-name", name],
       "study_name", "cannot name a study") for command, name in (
        (["lora", "--no-run", "--storage", "sqlite:///s.db"], "../../x"),
        (["infer", "--local-model", "arith-lm", "--inference-budget", "1", "--optimization-budget", "1"], "a/b"),
        (["hag", "label"], ".."), (["bench", "build-table"], "x/y"))],
    ("an agent override share above 1", {}, ["lora", "--sampler", "agent", "--agent-override-share", "1.5",
                                             "--storage", "sqlite:///s.db"], "agent_override_share", "at most 1"),
    ("an unknown agent mode", {}, ["lora", "--sampler", "agent", "--agent-mode", "boss", "--storage",
                                   "sqlite:///s.db"], "agent_mode", "centaur"),
    ("overrides without room for their reason", {},
     ["lora", "--sampler", "agent", "--agent-model", "m", "--endpoint", "http://127.0.0.1:9/v1",
      "--agent-reason-chars", "0", "--storage", "sqlite:///s.db"], "agent_reason_chars", "reason"),
    ("an unknown bench method", {}, ["bench", "samplers", "--table", str(TABLE), "--samplers", "agent-boss"],
     "samplers", "agent-lead"),
    ("a port above 65535", {}, ["serve", "--port", "99999"], "port", "at most 65535"),
    ("an absent device", {}, ["serve", "--device", "cuda:7"], "device", "no cuda device"),
    ("target size 0", {"c.csv": CURVES}, ["select", "--curves", "c.csv", "--target-size", "0"], "target_size",
     "at least 1"),
    ("a model with NaN losses", {"c.csv": CURVES.replace("B,3.2,2.4,2.1,1.9", "B,nan,nan,nan,nan")},
     ["select", "--curves", "c.csv"], "curves", "positive finite"),
    ("an unwritable plot", {"c.csv": CURVES}, ["select", "--curves", "c.csv", "--plot", "c.csv/plot.png"], "plot",
     "cannot write"),
    # the library names other fields in its messages; the command spells them as its flags
    ("select with neither curves nor models", {}, ["select"], "curves",
     "give either --curves FILE or --models A B C (with --dataset and --sizes)"),
    ("a target size under leave-one-out", {"c.csv": CURVES},
     ["bench", "select", "--protocol", "lodo", "--curves", "c.csv", "--target-size", "400"], "target_size",
     "--protocol lodo uses each file's largest size"),
    ("infer with no backend", {}, ["infer", "--inference-budget", "0.02", "--optimization-budget", "1", "--storage",
                                   "sqlite:///s.db"], "endpoint", "exactly one of --endpoint (a URL) or --local-model"),
    ("the agent sampler without its model", {},
     ["lora", "--sampler", "agent", "--endpoint", "http://127.0.0.1:9/v1", "--storage", "sqlite:///s.db"],
     "agent_model", "the model the endpoint serves in --agent-model"),
    # issue 28, group 7: text files that are not UTF-8, click's usage errors, no sampler to compare
    *[(f"a Latin-1 file as {field}", {name: text}, args, field, f"{name} is not UTF-8 (byte 0xe9 at position "
       f"{text.index(0xe9)}); save it as UTF-8") for field, name, text, args in (
        ("config", "c.yaml", LATIN1_YAML, ["lora", "--config", "c.yaml", "--storage", "sqlite:///s.db"]),
        ("space", "s.yaml", LATIN1_YAML, ["lora", "--space", "s.yaml", "--storage", "sqlite:///s.db"]),
        ("prices", "p.yaml", b"arith-lm: {input: 1, output: 1}\n" + LATIN1_YAML, [*INFER_LOCAL, "--prices", "p.yaml"]),
        ("task", "t.jsonl", LATIN1_JSONL, [*INFER_LOCAL, "--task", "t.jsonl"]),
        ("task", "h.jsonl", LATIN1_JSONL, ["hag", "label", "--task", "h.jsonl", "--metric", "exact"]),
        ("labels", "l.jsonl", LATIN1_JSONL, ["hag", "train", "--labels", "l.jsonl", "--output", "o"]))],
    ("a word for a number of trials", {}, ["lora", "--trials", "abc"], "trials", "'abc' is not an integer"),
    ("a word for a port", {}, ["serve", "--port", "abc"], "port", "'abc' is not an integer"),
    ("a word for a fraction", {}, [*INFER_LOCAL, "--test-fraction", "half"], "test_fraction", "'half' is not a number"),
    ("an unknown flag", {}, ["lora", "--x"], "usage", "no such option --x"),
    ("a flag without its value", {}, ["infer", "--n"], "n", "option '--n' requires an argument"),
    ("an unknown command", {}, ["tune"], "usage", "no such command 'tune'"),
    ("no sampler to compare", {}, ["bench", "samplers", "--table", str(ROOT / "benchmarks/data/arith-sft.json.gz"),
                                   "--samplers", "", "--output", "o"], "samplers", "name at least one method"),
    # issue 28, group 6: checked before storage is opened or anything is spent
    *[(f"an output folder under a file ({' '.join(w for w in command[:2] if not w.startswith('-'))})", {"f": "x"},
       command, field, "cannot write in f/out: Not a directory") for field, command in (
        ("output_dir", ["lora", "--dataset", "d.csv", "--output-dir", "f/out", "--storage", "sqlite:///s.db"]),
        ("output_dir", [*INFER_LOCAL, "--output-dir", "f/out", "--storage", "sqlite:///s.db"]),
        ("output_dir", ["hag", "label", "--output-dir", "f/out", "--storage", "sqlite:///s.db"]),
        ("output", ["hag", "train", "--labels", "l.jsonl", "--output", "f/out"]),
        ("output_dir", ["hag", "evaluate", "--labels", "l.jsonl", "--output-dir", "f/out"]),
        ("output_dir", ["report", "--output-dir", "f/out", "--storage", "sqlite:///s.db"]),
        ("output", ["bench", "build-table", "--output", "f/out/t.json.gz", "--storage", "sqlite:///s.db"]),
        ("output", ["bench", "samplers", "--table", str(ROOT / "benchmarks/data/arith-sft.json.gz"), "--output",
                    "f/out"]),
        ("plot", ["select", "--curves", "c.csv", "--plot", "f/out/p.png"]))],
    ("input found bad after the output folder was checked", {}, [*INFER_LOCAL, "--output-dir", "new/deep",
                                                                  "--prices", "missing.yaml"], "prices",
     "missing.yaml does not exist"),  # the check removed the folders it made
    ("pass@K above the fewest responses", {}, [*INFER_LOCAL, "--metric", "pass@100", "--storage", "sqlite:///s.db"],
     "metric", "pass@100 needs 100 or more responses per instance, but --n goes from 1 to 16"),
    *[(f"a negative seed ({command[0]})", {}, [*command, "--seed", "-1", "--storage", "sqlite:///s.db"], "seed",
       "must be at least 0, got -1") for command in (["lora"], INFER_LOCAL, ["hag", "label"])],
    ("a seed of 2**32", {}, ["lora", "--seed", str(2**32), "--storage", "sqlite:///s.db"], "seed",
     "must be less than 4294967296"),
    ("an empty template (infer)", {}, [*INFER_LOCAL, "--template", "", "--storage", "sqlite:///s.db"], "templates",
     "must not be empty or only spaces"),
    ("a blank template (hag label)", {}, ["hag", "label", "--template", " ", "--storage", "sqlite:///s.db"],
     "template", "must not be empty or only spaces"),
    ("a task of a billion problems", {}, [*INFER_LOCAL, "--task-size", "1000000000", "--storage", "sqlite:///s.db"],
     "task_size", "must be at most 100000"),
    ("a replay budget of 1e8 trials", {}, ["bench", "samplers", "--table", str(ROOT / "benchmarks/data/arith-sft"
                                                                              ".json.gz"),
                                           "--budget", "100000000", "--output", "o"], "budget", "at most 10000"),
]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if "__pycache__" not in p.parts}


def run(folder: Path, args: list[str], capsys, monkeypatch) -> tuple[int, str]:
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "argv", ["lmtune", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize(("case", "files", "args", "field", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, files, args, field, words, tmp_path, capsys,
                                                          monkeypatch):
    if case == "a read-only database":
        import sqlite3

        sqlite3.connect(tmp_path / "ro.db").close()
    if case == "an absent device" and os.environ.get("CUDA_VISIBLE_DEVICES", "") not in ("", "-1"):
        pytest.skip("this machine may have that device")
    for name, text in files.items():
        if isinstance(text, bytes):
            (tmp_path / name).write_bytes(text)
        else:
            (tmp_path / name).write_text(text)
    before = snapshot(tmp_path)
    code, err = run(tmp_path, args, capsys, monkeypatch)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}: ") and words in lines[0], err
    assert snapshot(tmp_path) == before


def test_a_study_where_every_trial_diverges_ends_with_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    (tmp_path / "d.csv").write_text(TWO_CLASSES)
    (tmp_path / "space.yaml").write_text("name: hot\nparams:\n  rank: [4]\n  alpha_ratio: [16]\n"
                                         "  learning_rate: [50.0, 80.0]\n  batch_size: [8]\n  dropout: 0.0\n")
    code, err = run(tmp_path, ["lora", "--dataset", "d.csv", "--space", "space.yaml", "--trials", "2",
                               "--max-length", "16", "--storage", "sqlite:///s.db"], capsys, monkeypatch)
    assert code == 1 and err.strip().splitlines()[-1].startswith("error: trials: no trial of study"), err
    assert "diverged" in err


def test_resume_compares_the_data_not_the_path(tmp_path, capsys, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "good.csv").write_text(TWO_CLASSES)
    base = ["lora", "--no-run", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--study-name", "same"]
    assert run(tmp_path, [*base, "--dataset", "data/good.csv"], capsys, monkeypatch)[0] == 0
    absolute = str(tmp_path / "data" / "good.csv")
    assert run(tmp_path, [*base, "--dataset", absolute], capsys, monkeypatch)[0] == 0  # same file, other path
    other = tmp_path / "elsewhere"
    (other / "data").mkdir(parents=True)
    (other / "data" / "good.csv").write_text(TWO_CLASSES.replace("great", "superb"))  # same relative path
    code, err = run(other, [*base, "--dataset", "data/good.csv"], capsys, monkeypatch)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: dataset: study 'same' was created with 'data/good.csv'"), err
    assert "loads other data" in last and "sha256" in last and last.endswith("or another --study-name")


def test_the_library_names_fields_and_only_the_command_spells_them_as_flags():
    """A field named in library text (in backquotes) reads as the option that sets it, however the config spells
    that option; a name no option sets, and text without backquotes, stay as they are."""
    from lmtune.cli.options import as_flags, flags_of
    from lmtune.inference.config import InferConfig
    from lmtune.selection.config import BenchSelectConfig

    text = "try `inference_budget` 0.03; widen `max_tokens`, `templates` or `no_such_field`; models stays"
    assert as_flags(text, flags_of(InferConfig)) == ("try --inference-budget 0.03; widen --max-tokens, --template "
                                                     "or `no_such_field`; models stays")
    assert as_flags("`as_json` and `curves`", flags_of(BenchSelectConfig)) == "--json and --curves"


@pytest.mark.parametrize("command", [INFER_LOCAL[:1] + ["--inference-budget", "1", "--optimization-budget", "1",
                                                          "--models", "m"],
                                     ["lora", "--sampler", "agent", "--agent-model", "m"]], ids=["infer", "agent"])
def test_an_endpoint_whose_models_list_is_not_json_is_one_line(command, tmp_path, capsys, monkeypatch):
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    from tests.servers import Server

    async def page(request):
        return HTMLResponse("<html><body>Welcome to nginx!</body></html>")

    with Server(Starlette(routes=[Route("/v1/models", page)])) as url:
        before = snapshot(tmp_path)
        code, err = run(tmp_path, [*command, "--endpoint", url, "--storage", "sqlite:///s.db"], capsys, monkeypatch)
    assert code == 2 and err.strip().splitlines() == [
        f"error: endpoint: {url} did not answer /v1/models with JSON (it answered '<html><body>Welcome to nginx!"
        "</body></html>'); give the base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1"], err
    assert snapshot(tmp_path) == before


def test_help_is_still_clicks_and_a_group_without_a_command_shows_its_help(tmp_path, capsys, monkeypatch):
    code, _ = run(tmp_path, ["serve", "--help"], capsys, monkeypatch)
    assert code == 0
    monkeypatch.setattr(sys, "argv", ["lmtune", "bench"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2 and "Commands:" in capsys.readouterr().err
