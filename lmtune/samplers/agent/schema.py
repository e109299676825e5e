"""The Optimizer's reply: a JSON schema built from the search space, and its strict parse.

The schema goes to the endpoint as OpenAI's ``response_format`` (``json_schema``), so a server that constrains
decoding (``lmtune serve``, vLLM, Ollama, llama.cpp, OpenAI) can only emit replies of this shape: categorical
parameters are ``enum``s of their choices, integers and floats are bounded numbers. The parse does not trust
the server: it checks the same shape again, snaps numbers onto the space (an int range's step, a float's
step, a numeric choice written with other digits) and says in one sentence what is wrong, so the sampler can
feed the error back to the model.
"""

from __future__ import annotations

import json
import math
from typing import Any

from lmtune.space import Float, Int, Listed, Param, SearchSpace, canonical_value

#: Longest ``reason`` the Optimizer may write before its config (bounds a reply from a model that rambles).
REASON_CHARS = 240
#: A numeric choice written with other digits is that choice when it is this close (relative).
CHOICE_TOLERANCE = 1e-6


class ReplyError(ValueError):
    """A reply that is not a config of the space; the message is fed back to the model as it stands."""


def param_schema(param: Param) -> dict[str, Any]:
    if isinstance(param, Listed):
        return {"enum": list(param.choices)}
    kind = "integer" if isinstance(param, Int) else "number"
    schema: dict[str, Any] = {"type": kind, "minimum": param.low, "maximum": param.high}
    if isinstance(param, Float):
        schema["multipleOf"] = resolution(param)
    notes = []
    if param.log:
        notes.append("log scale")
    if param.step not in (None, 1) or (isinstance(param, Float) and param.step is not None):
        notes.append(f"a multiple of {param.step} from {param.low}")
    if notes:
        schema["description"] = ", ".join(notes)
    return schema


def resolution(param: Float) -> float:
    """The finest digit a float may be written with: a power of ten, 1/1000 of the low end of a log range or
    1/10,000 of a linear range. Bounds plus a resolution make the grammar finite, so a constrained model cannot
    write digits until ``max_tokens`` cuts its reply; the parse snaps the value onto the space anyway."""
    if param.log:
        return 10.0 ** (math.floor(math.log10(param.low)) - 3)
    span = param.high - param.low
    return 10.0 ** (math.floor(math.log10(span)) - 4) if span > 0 else 1.0


def config_schema(space: SearchSpace, reason_chars: int = REASON_CHARS) -> dict[str, Any]:
    """``{"reason": short text, "config": {name: value, ...}}`` with every searched parameter required; the reason
    comes first, so a model states it before it commits to values (``reason_chars`` 0 leaves it out)."""
    names = [p.name for p in space.params]
    config = {"type": "object", "properties": {p.name: param_schema(p) for p in space.params},
              "required": names, "additionalProperties": False}
    properties: dict[str, Any] = {"config": config}
    if reason_chars:
        properties = {"reason": {"type": "string", "maxLength": reason_chars}, **properties}
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def response_format(space: SearchSpace, reason_chars: int = REASON_CHARS) -> dict[str, Any]:
    """OpenAI's structured-output request for the config schema (``strict``: every key required, none extra)."""
    return {"type": "json_schema", "json_schema": {"name": "next_config", "strict": True,
                                                   "schema": config_schema(space, reason_chars)}}


def parse_reply(text: str, space: SearchSpace) -> tuple[dict[str, Any], str]:
    """The searched parameters of a reply, snapped onto the space, and its reason; ``ReplyError`` otherwise."""
    try:
        reply = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ReplyError(f"the reply is not JSON ({exc.msg} at character {exc.pos}); answer with one JSON object"
                         if isinstance(exc, json.JSONDecodeError) else "the reply is not JSON") from None
    if not isinstance(reply, dict):
        raise ReplyError("the reply must be a JSON object with keys reason and config")
    config = reply.get("config", reply if all(p.name in reply for p in space.params) else None)
    if not isinstance(config, dict):
        raise ReplyError("the reply has no config object; write {\"reason\": ..., \"config\": {...}}")
    names = [p.name for p in space.params]
    unknown = sorted(set(config) - set(names) - set(space.fixed))
    if unknown:
        raise ReplyError(f"{unknown[0]} is not a parameter of this search; the parameters are {', '.join(names)}")
    missing = [n for n in names if n not in config]
    if missing:
        raise ReplyError(f"the config misses {', '.join(missing)}; give a value for every parameter")
    out = {p.name: snap(p, config[p.name]) for p in space.params}
    reason = reply.get("reason", "")
    return out, reason if isinstance(reason, str) else json.dumps(reason)


def has_words(reason: str) -> bool:
    """Whether a reason has a letter in it: a reply's reason is stored for people to read, and a small model under a
    grammar may fill the field with punctuation (a reason of "," was seen)."""
    return any(character.isalpha() for character in reason)


def snap(param: Param, value: Any) -> Any:
    """``value`` as the space stores it, or ``ReplyError`` saying what is allowed."""
    allowed = f"allowed: {param.describe()}"
    if isinstance(param, Listed):
        if param.contains(value):
            return param.canonical(value)
        if _is_number(value):
            close = [c for c in param.choices if _is_number(c) and
                     math.isclose(float(c), float(value), rel_tol=CHOICE_TOLERANCE, abs_tol=1e-300)]
            if close:
                return close[0]
        raise ReplyError(f"{param.name}={json.dumps(value)} is not in the space; {allowed}")
    if not _is_number(value):
        raise ReplyError(f"{param.name}={json.dumps(value)} is not a number; {allowed}")
    if not param.low <= value <= param.high:
        raise ReplyError(f"{param.name}={json.dumps(value)} is outside [{param.low}, {param.high}]; {allowed}")
    if isinstance(param, Int):
        k = round((value - param.low) / param.step)
        return int(min(param.high, param.low + k * param.step))
    if param.step is not None:
        values = param.values()
        return values[min(range(len(values)), key=lambda i: abs(values[i] - value))]
    return float(canonical_value(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
