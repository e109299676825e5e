"""The README's ``lmtune hag`` walkthrough runs as written, offline, at tiny sizes: every command of its code block,
in order, in one folder, with only flags that shrink it appended (fewer inputs, grids, repeats and steps);
``lmtune serve`` is started as a process and answers."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.cli.test_bad_input import run
from tests.servers import free_port

README = Path(__file__).resolve().parents[2] / "README.md"
#: Flags that make each step tiny; nothing the README sets is changed.
TINY = {("hag", "label"): ["--task-size", "30", "--limit", "3", "--n", "2", "--max-tokens", "6", "--temperature-grid",
                           "0,1", "--top-p-grid", "1", "--top-k-grid", "0", "--repetition-penalty-grid", "1,1.5",
                           "--repeats", "1", "--chunk-size", "3"],
        ("hag", "global"): ["--max-trials", "3"],
        ("hag", "train"): ["--min-steps", "2", "--epochs", "0.5"],
        ("hag", "evaluate"): ["--repeats", "1", "--random-seeds", "1"]}


def walkthrough() -> list[list[str]]:
    """The commands of the README's ``lmtune hag`` code block, continuation lines joined, without ``lmtune``."""
    section = README.read_text().split("## `lmtune hag`", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    return [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("lmtune ")]


def post(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def serve(args: list[str], folder: Path) -> None:
    """``lmtune serve`` as the README writes it, on a free port: it must start and list the model."""
    port = free_port()
    args = [str(port) if previous == "--port" else a for previous, a in zip(["", *args[:-1]], args, strict=True)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "lmtune.cli", *args], cwd=folder, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while True:
            assert process.poll() is None, process.stderr.read().decode()
            try:
                assert post(f"http://127.0.0.1:{port}/v1/models")["data"][0]["id"] == args[args.index("--model") + 1]
                return
            except (urllib.error.URLError, ConnectionError):
                assert time.time() < deadline, "lmtune serve did not start"
                time.sleep(0.5)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_every_step_of_the_readme_runs_as_written(tmp_path, capsys, monkeypatch):
    commands = walkthrough()
    assert [tuple(c[:2]) for c in commands] == [("hag", "label")] * 3 + [("hag", "global")] + [("hag", "train")] * 3 \
        + [("hag", "evaluate"), ("serve", "--model")]
    for args in commands[:-1]:
        code, err = run(tmp_path, args + TINY[tuple(args[:2])], capsys, monkeypatch)
        assert code in (0, None), f"lmtune {' '.join(args)}: {err}"
    evaluation = json.loads((tmp_path / "lmtune-out" / "hag" / "evaluation.json").read_text())
    methods = [m["method"] for m in evaluation["methods"]]
    assert methods == ["default", "greedy", "global", "random", "labels", "neighbours", "neighbours+guard", "head",
                       "head+guard", "hag-adapter", "oracle"]
    assert json.loads((tmp_path / "lmtune-out" / "hag" / "global" / "results.json").read_text())["hag_labels"][
        "task"] == "hag-mix"
    serve(commands[-1], tmp_path)
