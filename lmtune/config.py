"""Command configs: every command has one pydantic model; these helpers load it from YAML and flags.

Errors become one-line ``InputError``s that name the field.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import tempfile
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from lmtune.errors import InputError


def build_config(cls: type[BaseModel], config_file: Path | None = None, **overrides: Any) -> Any:
    """Fields from ``config_file`` (YAML), then non-None ``overrides``; errors name the field."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(load_yaml_mapping(config_file, field="config"))
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls(**values)
    except ValidationError as exc:
        raise validation_to_input_error(exc, cls) from None


def load_yaml_mapping(path: Path, *, field: str) -> dict[str, Any]:
    if not Path(path).is_file():
        raise InputError(field, f"file {path} does not exist")
    try:
        data = yaml.safe_load(read_user_text(path, field))
    except yaml.YAMLError as exc:
        raise InputError(field, f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise InputError(field, f"{path} must hold a mapping of field: value")
    return data


def validation_to_input_error(exc: ValidationError, cls: type[BaseModel]) -> InputError:
    """The first pydantic error as an InputError naming the field (``proxy.steps`` for a field of a field)."""
    err = exc.errors()[0]
    field, holder = _field_path(cls, err["loc"])
    if err["type"] == "extra_forbidden":
        return InputError(field, f"is not a known field; allowed: {', '.join(holder.model_fields)}")
    return InputError(field, _message(err))


def _field_path(cls: type[BaseModel], loc: tuple) -> tuple[str, type[BaseModel]]:
    """The dotted field path of a pydantic error location, and the model holding its last field. A field that is
    one of several models (a discriminated union) puts the chosen tag in the location; it is no field."""
    path, holder, rest = [], cls, list(loc)
    while rest:
        name = rest.pop(0)
        path.append(str(name))
        field = holder.model_fields.get(name) if isinstance(name, str) else None
        if field is None or not rest:
            break
        members = [t for t in (typing.get_args(field.annotation) or (field.annotation,))
                   if isinstance(t, type) and issubclass(t, BaseModel)]
        if field.discriminator and members:
            tag = rest.pop(0)
            members = [m for m in members if m.model_fields[field.discriminator].default == tag]
        if len(members) != 1:
            break
        holder = members[0]
    return ".".join(path + [str(part) for part in rest]) or "config", holder


#: Plain words for pydantic's range and choice errors (ctx holds the limit).
_LIMITS = {"greater_than_equal": ("must be at least", "ge"), "greater_than": ("must be greater than", "gt"),
           "less_than_equal": ("must be at most", "le"), "less_than": ("must be less than", "lt")}


def _message(err: dict[str, Any]) -> str:
    got = err.get("input")
    if err["type"] in _LIMITS:
        words, key = _LIMITS[err["type"]]
        return f"{words} {err['ctx'][key]}, got {got!r}"
    if err["type"] == "missing":
        return "is required"
    if err["type"] == "finite_number":
        return f"must be a finite number, got {got!r}"
    if err["type"] == "literal_error":
        return f"must be one of {err['ctx']['expected']}, got {got!r}"
    if err["type"] == "value_error":  # our validators' messages already say what was given
        return err["msg"].removeprefix("Value error, ")
    if err["type"] == "union_tag_invalid":
        return f"must be one of {err['ctx']['expected_tags']}, got {err['ctx']['tag']!r}"
    if err["type"] == "string_too_short":
        return f"must not be empty, got {got!r}"
    return f"{err['msg']} (got {got!r})"


def check_writable_folder(folder: Path | str | None, field: str) -> None:
    """``InputError`` on ``field`` unless ``folder`` can be created and written, checked before a command opens
    storage or spends anything, so that a folder it cannot write fails first, not after the trials. The check
    creates what is missing, writes and removes a file there, then removes the folders it created, so input found
    bad later still leaves nothing behind. (Write permission alone would not do: root may write anywhere the
    permission bits forbid, and a read-only file system or a file in the path fails only on writing.)"""
    if folder is None:
        return
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not os.path.lexists(p)]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".lmtune-write-check-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(field, f"cannot write in {folder}: {exc.strerror or exc}") from None
    finally:
        for created in missing:  # deepest first
            with contextlib.suppress(OSError):
                created.rmdir()


def read_user_text(path: Path | str, field: str) -> str:
    """A file the user gave (YAML, JSONL) as text. UTF-8 (a byte-order mark is skipped), as YAML and JSON
    require: a file in another encoding is an ``InputError`` on ``field`` naming its first byte that is not
    UTF-8, where Python's decoder would end in a traceback."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(field, f"{path} is not UTF-8 (byte 0x{data[exc.start]:02x} at position {exc.start}); "
                                "save it as UTF-8") from None


def read_jsonl(path: Path, field: str, *, valid: Callable[[dict], bool] = lambda row: True,
               row_error: str = "each line must be a JSON object") -> list[dict]:
    """The JSON objects of a user's JSONL file, one per non-blank line; a missing file, a line that is not JSON
    or a row that ``valid`` refuses is an ``InputError`` on ``field`` naming the file and line."""
    if not path.is_file():
        raise InputError(field, f"task file {path} does not exist")
    rows = []
    for number, line in enumerate(read_user_text(path, field).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(field, f"{path}:{number}: not JSON: {exc.msg}") from None
        if not isinstance(row, dict) or not valid(row):
            raise InputError(field, f"{path}:{number}: {row_error}")
        rows.append(row)
    return rows


def import_function(spec: str, field: str) -> Callable:
    """A user's ``module:function``, imported; anything that cannot be is an ``InputError`` on ``field``."""
    module_name, _, attr = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise InputError(field, f"cannot import {spec!r}: {exc}") from None
    if not callable(function):
        raise InputError(field, f"{spec!r} is not a function")
    return function
