"""Where benchmark scripts write their results in docs/benchmarks.md: each between its own two markers."""

from __future__ import annotations

import re
from pathlib import Path

from lmtune.files import write_atomic

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_section(name: str, body: str, path: Path = DOCS) -> None:
    """Replace the section between ``<!-- name:start -->`` and ``<!-- name:end -->`` of a Markdown file, or append
    it (a file that does not exist starts as ``# Benchmarks``); written atomically."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    write_atomic(path, text)
