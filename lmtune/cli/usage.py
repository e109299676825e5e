"""Click's usage errors (a word where a number goes, an unknown flag or command, a flag without its value) as
lmtune's one line, ``error: <field>: ...`` or ``error: usage: ...`` with exit 2, for every command at once: the
``lmtune`` group parses without click's standalone mode and prints the line itself. ``--help`` and a group called
with no arguments show click's help as before."""

from __future__ import annotations

import re
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from lmtune._compat import click_errors, is_help_instead, rejected_input

ClickException, UsageError = click_errors()

#: pydantic's conversion errors of a typed value, as what the value is not.
NOT_A = {"int_parsing": "an integer", "int_from_float": "an integer", "float_parsing": "a number",
         "bool_parsing": "true or false", "int_type": "an integer", "float_type": "a number"}
#: click's own conversion errors (Typer before 0.2x converts with click), as what the value is not.
CLICK_NOT_A = {"integer": "an integer", "float": "a number", "boolean": "true or false"}
CLICK_CONVERSION = re.compile(r"^'(?P<value>.*)' is not a valid (?P<kind>integer|float|boolean)\.?$", re.S)


class LmtuneGroup(TyperGroup):
    """The ``lmtune`` group: click's usage errors, raised anywhere below it, end as one lmtune line."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except ClickException as exc:
            if is_help_instead(exc):
                exc.show()
            else:
                print(f"error: {usage_line(exc, self)}", file=sys.stderr)
            sys.exit(exc.exit_code)
        except typer.Abort:
            print("Aborted!", file=sys.stderr)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def usage_line(exc: Exception, group: Any) -> str:
    """``<field>: <what is wrong>`` for a value or flag of a known field, else ``usage: <what is wrong>``."""
    param = getattr(exc, "param", None)
    if param is not None and param.name:
        rejected = rejected_input(exc)
        if rejected is not None and rejected[1] in NOT_A:
            return f"{param.name}: {rejected[0]!r} is not {NOT_A[rejected[1]]}"
        converted = CLICK_CONVERSION.match(str(getattr(exc, "message", "")))
        if converted is not None:
            return f"{param.name}: {converted['value']!r} is not {CLICK_NOT_A[converted['kind']]}"
        return f"{param.name}: {_sentence(getattr(exc, 'message', '') or exc.format_message())}"
    option = getattr(exc, "option_name", None)
    if type(exc).__name__ == "NoSuchOption":
        hint = getattr(exc, "possibilities", None)
        hint = sorted(hint or ())
        maybe = f" (did you mean {', '.join(hint[:-1])} or {hint[-1]}?)" if len(hint) > 1 else \
            f" (did you mean {hint[0]}?)" if hint else ""
        return f"usage: no such option {option}{maybe}; {_help_of(exc)} lists the options"
    field = _field_of(exc, option, group)
    if field is not None:
        return f"{field}: {_sentence(exc.format_message())}"
    return f"usage: {_sentence(exc.format_message())}; {_help_of(exc)} lists what it takes"


def _field_of(exc: Exception, option: str | None, group: Any) -> str | None:
    """The field an option spelling belongs to: in the command being parsed, or, where click did not say which
    (a flag without its value), in every command that has that flag, if they agree."""
    if option is None:
        return None
    ctx = getattr(exc, "ctx", None)
    commands = [ctx.command] if ctx is not None else list(_commands(group))
    names = {p.name for command in commands for p in command.params if option in getattr(p, "opts", ())}
    return names.pop() if len(names) == 1 else None


def _commands(group: Any):
    yield group
    for command in getattr(group, "commands", {}).values():
        yield from _commands(command)


def _help_of(exc: Exception) -> str:
    ctx = getattr(exc, "ctx", None)
    return f"'{ctx.command_path} --help'" if ctx is not None else "'lmtune --help'"


def _sentence(text: str) -> str:
    """Click's sentence as a clause of lmtune's line: first letter lower case, no final period."""
    text = " ".join(text.split()).rstrip(".")
    return text[:1].lower() + text[1:]
