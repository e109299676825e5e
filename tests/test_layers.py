"""The shape of the code: imports run down the layers only, no two modules import each other, modules stay small.

Read from the source with ``ast`` (imports inside functions included), so a lazy import cannot hide a loop.
docs/ARCHITECTURE.md draws the same layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "lmtune"

#: Lower numbers sit lower; a module may import from a lower layer or from its own package.
LAYERS = {
    "lmtune.errors": 0, "lmtune.attrs": 0, "lmtune.files": 0, "lmtune.version": 0,
    "lmtune.results": 1, "lmtune._compat": 1, "lmtune.config": 1,
    "lmtune.space": 2, "lmtune.arithmetic": 2,
    "lmtune.llm": 3, "lmtune.trajectory": 3,
    "lmtune.runtime": 4, "lmtune.finetune": 4, "lmtune.samplers": 4,
    "lmtune.lora": 5, "lmtune.inference": 5, "lmtune.selection": 5, "lmtune.hag": 5,
    "lmtune.bench": 6, "lmtune.report": 6,
    "lmtune.cli": 7,
    "lmtune": 8, "lmtune.study": 8, "lmtune.synthetic": 8,  # the package's lazy exports and moved-name shims
}
#: Lines a module may have before it must say at its top why it is longer.
MAX_LINES = 420


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package(module: str) -> str:
    """The layer key of a module: the longest key of ``LAYERS`` it falls under."""
    keys = [k for k in LAYERS if module == k or module.startswith(k + ".")]
    return max(keys, key=len)


def imports(path: Path) -> set[str]:
    """Every lmtune module a file imports, at any depth of its code."""
    name = module_name(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lmtune")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = name.split(".")[: len(name.split(".")) - node.level + (path.name == "__init__.py")]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("lmtune"):
                found |= {f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base for a in node.names}
    return {m for m in found if m != name}


def _is_module(name: str) -> bool:
    path = ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
GRAPH = {name: {m for m in imports(path) if m in MODULES} for name, path in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_down_the_layers(module):
    source = package(module)
    upward = sorted(m for m in GRAPH[module]
                    if package(m) != source and LAYERS[package(m)] >= LAYERS[source])
    assert not upward, f"{module} (layer {LAYERS[source]}) imports {upward}"


def test_no_module_imports_itself_back():
    index, low, stack, on_stack, loops = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    # a package's __init__ that re-exports its own modules is not a loop of two modules
    loops = [c for c in loops if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]
    assert not loops, f"modules that import each other: {loops}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_fit_in_a_head(module):
    text = MODULES[module].read_text()
    lines = text.count("\n")
    reason = "Longer than" in text.split('"""')[1] if text.startswith('"""') else False
    assert lines <= MAX_LINES or reason, f"{module} has {lines} lines and no reason at its top"


def test_every_package_has_a_layer():
    assert all(package(m) in LAYERS for m in MODULES)
