"""Numbers ``lmtune infer`` cannot use (``nan`` budgets, no problems, no trials, no responses) are one-line
errors naming the field, exit 2, with nothing written."""

from __future__ import annotations

import sys

import pytest

from lmtune.cli import main


@pytest.mark.parametrize(("args", "message"), [
    (["--inference-budget", "nan"], "error: inference_budget: must be a finite number"),
    (["--optimization-budget", "inf"], "error: optimization_budget: must be a finite number"),
    (["--task-size", "0"], "error: task_size: must be at least 1"),
    (["--max-trials", "0"], "error: max_trials: must be at least 1"),
    (["--timeout", "0"], "error: timeout: must be greater than 0"),
    (["--n", "0,4"], "error: n: expected whole numbers >= 1"),
])
def test_nonsense_numbers_exit_2_with_one_line_and_write_nothing(tmp_path, monkeypatch, capsys, args, message):
    base = {"--inference-budget": "0.02", "--optimization-budget": "1"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    argv = ["lmtune", "infer", "--local-model", "arith-lm", *[x for kv in base.items() for x in kv],
            "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--output-dir", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(message), err
    assert list(tmp_path.iterdir()) == []
