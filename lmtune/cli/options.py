"""Command-line options made from a command's pydantic config, so each field is declared once.

A field's description is its ``--help`` text, its default is shown there, and its type decides the option:
``bool`` is a ``--x/--no-x`` switch, a ``Literal`` lists its choices, a list is comma-separated or repeated.
Options default to "not given", so ``--config run.yaml`` fields are overridden only by flags typed.
Per-field details go in ``json_schema_extra``:

* ``cli``: ``False`` keeps a field off the command line (set through ``--config`` or Python only);
* ``flags``: the option names, e.g. ``["--study", "--study-name"]``;
* ``split``: ``","`` reads a list from one comma-separated value; otherwise a list option repeats;
* ``metavar``: the placeholder shown in help (default: a plain name for the type).

Only the CLI knows how a field is spelled as a flag. Library text (an ``InputError``'s message, a log line, a stored
warning, a field's description) names another field in backquotes, e.g. ``give `endpoint` or `local_model```;
``with_flags`` spells each as the option of the command that runs (``--endpoint``, ``--local-model``) wherever the
CLI prints such text, the ``--help`` text included.
"""

from __future__ import annotations

import functools
import inspect
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

#: Help placeholders by type: plain words instead of click's INTEGER/FLOAT/<list[str]>.
METAVARS = {int: "N", float: "X", str: "TEXT", Path: "PATH"}
#: A field named in library text: its name in backquotes.
FIELD_REFERENCE = re.compile(r"`([a-z][a-z0-9_]*)`")
#: The configs of the commands invoked in this process, the innermost last: whose flags ``with_flags`` uses.
_invoked: list[type[BaseModel]] = []


def config_options(model: type[BaseModel], *, skip: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Decorate ``f(..., values: dict)`` so that Typer sees one option per field of ``model``.

    The decorated function keeps its own leading parameters (a Typer context, a ``--config`` file, ...) and
    receives the fields the user gave as ``values`` (names as in the model, lists already split).
    """
    def decorate(function: Callable) -> Callable:
        own = [p for p in inspect.signature(function, eval_str=True).parameters.values() if p.name != "values"]
        generated = [(name, field) for name, field in model.model_fields.items()
                     if name not in skip and _extra(field).get("cli", True)]
        parameters = own + [_parameter(name, field, model) for name, field in generated]
        splitters = {name: _extra(field).get("split") for name, field in generated}

        @functools.wraps(function)
        def command(**kwargs: Any) -> Any:
            _invoked[:] = [*(m for m in _invoked if m is not model), model]
            values = {}
            for name, _ in generated:
                value = kwargs.pop(name)
                if value is None:
                    continue
                if splitters[name] and isinstance(value, str):
                    value = [part.strip() for part in value.split(splitters[name]) if part.strip()]
                values[name] = value
            return function(**kwargs, values=values)

        command.__signature__ = inspect.Signature(parameters)
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        del command.__wrapped__  # Typer must read the generated signature, not the function's own
        return command

    return decorate


def flag_of(model: type[BaseModel], name: str) -> str | None:
    """The option that sets field ``name`` of ``model`` (its first spelling), or None when it has none."""
    field = model.model_fields.get(name)
    if field is None or not _extra(field).get("cli", True):
        return None
    return _flags(name, field)[0]


def with_flags(text: str, models: list[type[BaseModel]] | None = None) -> str:
    """``text`` with each field reference (`name`) spelled as the option of ``models`` (by default the configs of the
    commands invoked, innermost first) that sets it; a name no option sets stays as it is."""
    models = list(reversed(_invoked)) if models is None else models

    def spelled(match: re.Match) -> str:
        return next((f for f in (flag_of(m, match.group(1)) for m in models) if f), match.group(0))

    return FIELD_REFERENCE.sub(spelled, text)


def _flags(name: str, field: FieldInfo) -> list[str]:
    return list(_extra(field).get("flags") or [f"--{name.replace('_', '-')}"])


def _extra(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def _parameter(name: str, field: FieldInfo, model: type[BaseModel]) -> inspect.Parameter:
    extra = _extra(field)
    kind, choices = _cli_type(field.annotation)
    flags = _flags(name, field)
    if kind is bool:
        flag = flags[0]
        flags = [f"{flag}/--no-{flag[2:]}"]
    split = extra.get("split")
    if typing.get_origin(kind) is list and split:
        kind = str
    help_text = with_flags(field.description or "", [model]).rstrip(".")
    if choices:
        help_text += ("; " if help_text else "") + "one of " + ", ".join(map(str, choices))
    default = _default_text(field)
    if default is not None:
        help_text += f" [default: {default}]"
    metavar = extra.get("metavar", "" if kind is bool else None)
    if metavar is None:
        inner = typing.get_args(kind)[0] if typing.get_origin(kind) is list else kind
        metavar = METAVARS.get(inner, "VALUE") if not choices else "|".join(map(str, choices))
        if split:
            metavar = f"{metavar}{split}{metavar}..."
    option = typer.Option(*flags, help=help_text, metavar=metavar, show_default=False)
    # typing.Optional, not ``kind | None``: Typer before 0.15 reads only the former
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[Optional[kind], option])  # noqa: UP045


def _cli_type(annotation: Any) -> tuple[Any, tuple | None]:
    """The type Typer parses for a field (``X | None`` unwrapped, Literal as str) and a Literal's choices."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is Literal:
        return str, typing.get_args(annotation)
    if typing.get_origin(annotation) is list:
        inner = typing.get_args(annotation)[0]
        return list[inner if inner in METAVARS else str], None
    if typing.get_origin(annotation) is tuple or annotation not in (bool, int, float, str, Path):
        return str, None  # ranges and other composite values: the model's validators parse the text
    return annotation, None


def _default_text(field: FieldInfo) -> str | None:
    if field.default is PydanticUndefined or field.default is None:
        return None
    value = field.default
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) if value else None
    return str(value)
