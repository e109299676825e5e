"""The expert blocks' prompts: text files with ``$placeholders`` that users may replace by a folder of their own.

``--agent-prompts DIR`` may hold any of ``system.txt``, ``analyzer.txt``, ``optimizer.txt``, ``retry.txt`` (lead
mode) and ``advisor.txt`` (centaur mode); the files it lacks come from this package. A template may use only its
own placeholders, so a typo is an error at start, not an empty hole in a prompt at trial 12.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from lmtune.errors import InputError

BUILT_IN = Path(__file__).resolve().parent / "prompts"
#: Each template and the placeholders it may use.
PLACEHOLDERS: dict[str, frozenset[str]] = {
    "system": frozenset(),
    "analyzer": frozenset({"goal", "space", "report"}),
    "optimizer": frozenset({"goal", "space", "report", "diagnosis", "schema"}),
    "retry": frozenset({"error"}),
    "advisor": frozenset({"goal", "space", "report", "diagnosis", "schema", "proposal"}),
}


@dataclass(frozen=True)
class Prompts:
    """The templates, checked."""

    templates: dict[str, string.Template]
    source: str

    @classmethod
    def load(cls, folder: str | Path | None = None) -> Prompts:
        texts = {name: (BUILT_IN / f"{name}.txt").read_text() for name in PLACEHOLDERS}
        source = "built-in"
        if folder is not None:
            path = Path(folder)
            if not path.is_dir():
                raise InputError("agent_prompts", f"{folder} is not a folder of prompt files")
            stray = sorted(p.name for p in path.glob("*.txt") if p.stem not in PLACEHOLDERS)
            if stray:
                raise InputError("agent_prompts", f"{stray[0]} is not a prompt of the agent; files: "
                                 + ", ".join(f"{n}.txt" for n in PLACEHOLDERS))
            for name in PLACEHOLDERS:
                if (path / f"{name}.txt").is_file():
                    texts[name] = (path / f"{name}.txt").read_text()
            source = str(path.resolve())
        templates = {}
        for name, text in texts.items():
            template = string.Template(text)
            if not template.is_valid():
                raise InputError("agent_prompts", f"{name}.txt has a bad placeholder ($$ writes a dollar sign)")
            unknown = sorted(set(template.get_identifiers()) - PLACEHOLDERS[name])
            if unknown:
                allowed = ", ".join(f"${p}" for p in sorted(PLACEHOLDERS[name])) or "none"
                raise InputError("agent_prompts", f"{name}.txt uses ${unknown[0]}; it may use {allowed}")
            templates[name] = template
        return cls(templates, source)

    def render(self, name: str, **values: str) -> str:
        return self.templates[name].safe_substitute(values)
