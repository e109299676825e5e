"""What a new user sees first: ``lmtune --version`` and help that shows every default in plain words."""

import re

import pytest
from typer.testing import CliRunner

from lmtune import __version__
from lmtune.cli import app

COMMANDS = [["lora"], ["lora", "proxy-check"], ["infer"], ["select"], ["worker"], ["status"], ["serve"],
            ["report"], ["bench", "build-table"], ["bench", "samplers"], ["bench", "select"]]


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"lmtune {__version__}"


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_shows_defaults_and_plain_placeholders(command):
    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    assert not re.search(r"<(?:bool|int|float|str|path|list\[\w+\])>", result.output, re.I), result.output
    assert "[default:" in result.output or command == ["status"] and "[default: off]" in result.output
