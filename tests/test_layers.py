"""The shape of the code: imports run down the layers without circles, modules and functions stay small.

The layers are import-linter contracts in pyproject.toml (``[tool.importlinter]``), the same ones
docs/ARCHITECTURE.md draws; grimp reads every import statement, those inside functions included, so a lazy import
cannot hide an arrow up or a circle. The functions allowed to be longer are listed, each with its reason, in
docs/ARCHITECTURE.md; this test reads that list, so the document stays true.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Where the limits hold: the library, its benchmarks, scripts and tests.
TREES = ("lmtune", "benchmarks", "scripts", "tests")
#: Lines a module may have before it must say at its top (its docstring: "Longer than ...") why it is longer.
MAX_LINES = 400
#: Lines a function or method may have (its ``def`` line to its last line) unless docs/ARCHITECTURE.md lists it.
MAX_FUNCTION_LINES = 60
#: Packages whose public names are imported on first use (``lmtune._lazy.lazy_exports``).
LAZY_PACKAGES = ("lmtune", "lmtune.finetune", "lmtune.hag", "lmtune.lora", "lmtune.samplers", "lmtune.selection")

SOURCES = sorted(p.relative_to(REPO).as_posix() for tree in TREES for p in (REPO / tree).rglob("*.py"))


def test_imports_keep_the_contracts_of_pyproject_toml():
    """Layers (down only; one layer's packages independent), no circles, nothing imports the package top.

    In an interpreter of its own: import-linter sets up its logging with ``logging.config.dictConfig``, which
    disables every logger that already exists in the process, so a later test's ``caplog`` would see nothing."""
    code = ("import sys\nfrom importlinter.cli import lint_imports\n"
            f"sys.exit(lint_imports(config_filename={str(REPO / 'pyproject.toml')!r}, no_cache=True, no_logo=True))")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("path", SOURCES)
def test_modules_fit_in_a_head(path):
    text = (REPO / path).read_text()
    lines = text.count("\n")
    reason = "Longer than" in text.split('"""')[1] if text.startswith('"""') else False
    assert lines <= MAX_LINES or reason, f"{path} has {lines} lines and no reason at its top"


def functions(path: str) -> dict[str, int]:
    """``path:Class.method`` (nested functions as ``outer.inner``) -> lines, for every function of a file."""
    found: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                found[f"{path}:{prefix}{child.name}"] = child.end_lineno - child.lineno + 1
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse((REPO / path).read_text()), "")
    return found


def justified_functions() -> dict[str, str]:
    """The list of docs/ARCHITECTURE.md's section "Functions over 60 lines": ``| `path:name` | why |`` rows."""
    doc = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    section = doc.split(f"## Functions over {MAX_FUNCTION_LINES} lines", 1)
    assert len(section) == 2, f"docs/ARCHITECTURE.md has no section 'Functions over {MAX_FUNCTION_LINES} lines'"
    body = section[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([^`]+:[^`]+)` \| (.*?) \|$", body, re.M))


def test_functions_fit_on_a_screen():
    lengths = {name: n for path in SOURCES for name, n in functions(path).items()}
    listed = justified_functions()
    long = {name: n for name, n in lengths.items() if n > MAX_FUNCTION_LINES}
    unlisted = {name: n for name, n in long.items() if name not in listed}
    assert not unlisted, f"functions over {MAX_FUNCTION_LINES} lines that docs/ARCHITECTURE.md does not justify: " \
                         f"{unlisted}"
    stale = sorted(name for name in listed if name not in long)
    assert not stale, f"docs/ARCHITECTURE.md justifies functions that are gone or no longer long: {stale}"
    assert all(why.strip() for why in listed.values()), "every listed function needs its reason"


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_lazy_export_resolves(package):
    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if getattr(module, name, None) is None]
    assert not missing, f"{package} exports names its modules do not define: {missing}"
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'no_such_name'"):
        module.no_such_name  # noqa: B018
