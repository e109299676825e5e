"""Command-line options made from a command's pydantic config, so each field is declared once.

A field's description is its ``--help`` text, its default is shown there, and its type decides the option:
``bool`` is a ``--x/--no-x`` switch, a ``Literal`` lists its choices, a list is comma-separated or repeated.
Options default to "not given", so ``--config run.yaml`` fields are overridden only by flags typed.
Per-field details go in ``json_schema_extra``:

* ``cli``: ``False`` keeps a field off the command line (set through ``--config`` or Python only);
* ``flags``: the option names, e.g. ``["--study", "--study-name"]``;
* ``split``: ``","`` reads a list from one comma-separated value; otherwise a list option repeats;
* ``metavar``: the placeholder shown in help (default: a plain name for the type).

Library code names fields, never flags: a message that points at another field writes its name between single
backticks; ``as_flags`` shows it as the running command's flag (``--proxy-fraction`` for proxy_fraction), in
help texts, errors and log lines.
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
#: The running command's fields and their flags (``config_options`` sets them when the command starts).
_running_flags: dict[str, str] = {}


def flags_of(model: type[BaseModel]) -> dict[str, str]:
    """Each command-line field of ``model`` and the flag it is typed as."""
    return {name: _flags(name, field)[0] for name, field in model.model_fields.items()
            if _extra(field).get("cli", True)}


def as_flags(text: str, flags: dict[str, str] | None = None) -> str:
    """``text`` with every field it names between single backticks (proxy_fraction) written as its flag
    (``--proxy-fraction``); by default the running command's flags. Other words in backticks stay as they are."""
    flags = _running_flags if flags is None else flags
    return re.sub(r"`(\w+)`", lambda found: flags.get(found[1], found[0]), text)


def config_options(model: type[BaseModel], *, skip: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Decorate ``f(..., values: dict)`` so that Typer sees one option per field of ``model``.

    The decorated function keeps its own leading parameters (a Typer context, a ``--config`` file, ...) and
    receives the fields the user gave as ``values`` (names as in the model, lists already split).
    """
    def decorate(function: Callable) -> Callable:
        own = [p for p in inspect.signature(function, eval_str=True).parameters.values() if p.name != "values"]
        generated = [(name, field) for name, field in model.model_fields.items()
                     if name not in skip and _extra(field).get("cli", True)]
        flags = flags_of(model)
        parameters = own + [_parameter(name, field, flags) for name, field in generated]
        splitters = {name: _extra(field).get("split") for name, field in generated}

        @functools.wraps(function)
        def command(**kwargs: Any) -> Any:
            _running_flags.clear()
            _running_flags.update(flags)
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


def _extra(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def _flags(name: str, field: FieldInfo) -> list[str]:
    return list(_extra(field).get("flags") or [f"--{name.replace('_', '-')}"])


def _parameter(name: str, field: FieldInfo, flags_by_field: dict[str, str]) -> inspect.Parameter:
    extra = _extra(field)
    kind, choices = _cli_type(field.annotation)
    flags = _flags(name, field)
    if kind is bool:
        flag = flags[0]
        flags = [f"{flag}/--no-{flag[2:]}"]
    split = extra.get("split")
    if typing.get_origin(kind) is list and split:
        kind = str
    help_text = as_flags((field.description or "").rstrip("."), flags_by_field)
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
