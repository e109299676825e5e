"""Schema-constrained decoding for local models: at every step only tokens that keep the reply valid may win.

``lmtune serve`` honours OpenAI's ``response_format`` (``json_schema``, ``json_object``) with llguidance
(the Rust engine behind Guidance; one wheel without dependencies): it compiles the JSON schema to a grammar
over the model's own tokenizer and gives, before each token, the set of tokens that keep the output a prefix
of a valid reply, and after the reply is complete only the end token. So a reply that ends with the end token
is valid JSON of the schema by construction, whatever the model's weights. Why llguidance and not
lm-format-enforcer, outlines-core or xgrammar: docs/decisions.md (measured by
``benchmarks/constrained_decoding.py``).

Whitespace between JSON tokens is not allowed (llguidance's ``whitespace_flexible`` off unless the schema's
``x-guidance`` turns it on): a weak model may otherwise emit spaces or newlines until ``max_tokens``.
"""

from __future__ import annotations

import functools
import json
from typing import Any

#: The JSON compiler's defaults; a schema's own ``x-guidance`` entry overrides them.
JSON_DEFAULTS = {"whitespace_flexible": False}


class GrammarError(ValueError):
    """A ``response_format`` this server cannot honour (unknown type, a schema llguidance rejects)."""


def schema_of(response_format: Any) -> dict[str, Any] | None:
    """The JSON schema an OpenAI ``response_format`` asks for (JSON text or a dict), or None for free text."""
    if response_format is None:
        return None
    if isinstance(response_format, str):
        try:
            response_format = json.loads(response_format)
        except json.JSONDecodeError as exc:
            raise GrammarError(f"response_format is not JSON: {exc.msg}") from None
    if not isinstance(response_format, dict):
        raise GrammarError("response_format must be an object such as {\"type\": \"json_schema\", ...}")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise GrammarError("response_format json_schema needs {\"json_schema\": {\"schema\": {...}}}")
        return schema
    raise GrammarError(f"response_format type {kind!r} is not supported; use json_schema, json_object or text")


class Grammars:
    """Grammars compiled for one tokenizer. Building llguidance's view of the tokenizer takes about a second
    for a 150k-token vocabulary, so it is built once, at the first constrained request."""

    def __init__(self, tokenizer: Any):
        if tokenizer.eos_token_id is None:
            raise GrammarError("this model's tokenizer has no end token, which constrained decoding needs")
        self.hf_tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        self._compile = functools.lru_cache(maxsize=64)(self._compile_uncached)

    @functools.cached_property
    def tokenizer(self) -> Any:
        import llguidance.hf

        return llguidance.hf.from_tokenizer(self.hf_tokenizer)

    def _compile_uncached(self, schema_text: str) -> str:
        from llguidance import LLMatcher

        try:
            grammar = LLMatcher.grammar_from_json_schema(schema_text, defaults=JSON_DEFAULTS)
        except ValueError as exc:
            raise GrammarError(f"response_format schema: {exc}"[:300]) from None
        error = LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error and not error.startswith("WARNING"):
            raise GrammarError(f"response_format schema: {error}"[:300])
        return grammar

    # Keys keep their order: a schema's property order is the order the reply writes them in.

    def check(self, response_format: Any) -> None:
        """Raise ``GrammarError`` now for a format that a request could not be decoded with."""
        schema = schema_of(response_format)
        if schema is not None:
            self._compile(json.dumps(schema))

    def constraint(self, response_format: Any) -> Constraint | None:
        """A fresh per-reply constraint for ``response_format``, or None for free text."""
        schema = schema_of(response_format)
        if schema is None:
            return None
        from llguidance import LLMatcher

        matcher = LLMatcher(self.tokenizer, self._compile(json.dumps(schema)))
        if matcher.is_error():
            raise GrammarError(f"response_format schema: {matcher.get_error()}"[:300])
        return Constraint(matcher, self.vocab_size)


class Constraint:
    """The allowed next tokens of one reply, advanced token by token."""

    def __init__(self, matcher: Any, vocab_size: int):
        self.matcher = matcher
        self.vocab_size = vocab_size

    def allowed(self, width: int) -> Any:
        """A boolean tensor of ``width`` (the model's logits, possibly wider than the tokenizer)."""
        import numpy as np
        import torch

        bias = np.frombuffer(self.matcher.compute_logit_bias(), dtype=np.uint8)[: min(width, self.vocab_size)]
        mask = torch.zeros(width, dtype=torch.bool)
        mask[: len(bias)] = torch.from_numpy(bias > 0)
        return mask

    def consume(self, token: int) -> None:
        self.matcher.consume_token(token)


def mask_logits(logits: Any, constraints: list[Constraint | None], done: Any) -> None:
    """Set the logits of disallowed tokens to -inf, in place, for every unfinished constrained row."""
    for i, constraint in enumerate(constraints):
        if constraint is not None and not bool(done[i]):
            allowed = constraint.allowed(logits.shape[-1]).to(logits.device)
            if bool(allowed.any()):  # none allowed: the matcher failed; let the row end by its limit
                logits[i].masked_fill_(~allowed, float("-inf"))


def consume(tokens: Any, constraints: list[Constraint | None], done: Any) -> None:
    """Advance every unfinished constrained row by the token it took."""
    for i, constraint in enumerate(constraints):
        if constraint is not None and not bool(done[i]):
            constraint.consume(int(tokens[i]))
