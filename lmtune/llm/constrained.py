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

What cannot work is refused before decoding (``GrammarError``, HTTP 400): a schema nested deeper than
``MAX_DEPTH`` or longer than ``MAX_SCHEMA_CHARS``, and a schema no reply of which the model's vocabulary can begin
(arith-lm writes digits and ``+-*=?``: no ``{``). A grammar that fails while decoding (a schema whose every
instance is infinite exhausts llguidance's parser) ends its row without the end token, so the reply's
``finish_reason`` is ``length``, never ``stop`` on a truncated reply.
"""

from __future__ import annotations

import functools
import json
from typing import Any

#: The JSON compiler's defaults; a schema's own ``x-guidance`` entry overrides them.
JSON_DEFAULTS = {"whitespace_flexible": False}
#: Deepest nesting of objects and lists in a schema, and its longest JSON text.
MAX_DEPTH, MAX_SCHEMA_CHARS = 64, 65536


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
        _check_size(schema)
        return schema
    raise GrammarError(f"response_format type {kind!r} is not supported; use json_schema, json_object or text")


def _check_size(schema: dict) -> None:
    """Depth first, without recursion (a schema nested thousands deep must not exhaust Python's stack)."""
    stack, deepest = [(schema, 1)], 1
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            raise GrammarError(f"response_format schema is nested deeper than {MAX_DEPTH} levels")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
        raise GrammarError(f"response_format schema is longer than {MAX_SCHEMA_CHARS} characters of JSON")


class Grammars:
    """Grammars compiled for one tokenizer. Building llguidance's view of the tokenizer takes about a second
    for a 150k-token vocabulary, so it is built once, at the first constrained request."""

    def __init__(self, tokenizer: Any):
        if tokenizer.eos_token_id is None:
            raise GrammarError("this model's tokenizer has no end token, which constrained decoding needs")
        self.hf_tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        #: Special tokens other than the end token (<unk>, <pad>, ...) are never part of a constrained reply.
        self.banned = sorted(set(tokenizer.all_special_ids) - {tokenizer.eos_token_id})
        self._compile = functools.lru_cache(maxsize=64)(self._compile_uncached)

    @functools.cached_property
    def tokenizer(self) -> Any:
        """llguidance's view of the tokenizer. llguidance reads each token's bytes through the tokenizer's decoder
        (byte-level BPE, byte fallback) and gives up on one that only joins tokens (``Fuse``: arith-lm's and
        hag-lm's characters); for those the bytes are each token's own text."""
        import llguidance.hf

        try:
            return llguidance.hf.from_tokenizer(self.hf_tokenizer)
        except ValueError as exc:
            decoder = (json.loads(self.hf_tokenizer.backend_tokenizer.to_str()).get("decoder") or {}).get("type")
            if decoder != "Fuse":
                raise GrammarError(f"this model's tokenizer does not support constrained decoding ({exc})") from None
        from llguidance import LLTokenizer, TokenizerWrapper

        return LLTokenizer(TokenizerWrapper(_JoinedTokens(self.hf_tokenizer)),
                           eos_token=self.hf_tokenizer.eos_token_id)

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
        self.constraint(response_format)

    def constraint(self, response_format: Any) -> Constraint | None:
        """A fresh per-reply constraint for ``response_format``, or None for free text."""
        schema = schema_of(response_format)
        if schema is None:
            return None
        from llguidance import LLMatcher

        matcher = LLMatcher(self.tokenizer, self._compile(json.dumps(schema)))
        if matcher.is_error():
            raise GrammarError(f"response_format schema: {matcher.get_error()}"[:300])
        constraint = Constraint(matcher, self.vocab_size, self.banned)
        if not bool(constraint.allowed(self.vocab_size).any()):
            raise GrammarError("response_format: this model's vocabulary cannot begin any reply of this schema")
        return constraint


class Constraint:
    """The allowed next tokens of one reply, advanced token by token."""

    def __init__(self, matcher: Any, vocab_size: int, banned: list[int] | tuple[int, ...] = ()):
        self.matcher = matcher
        self.vocab_size = vocab_size
        self.banned = [token for token in banned if token < vocab_size]

    def allowed(self, width: int) -> Any:
        """A boolean tensor of ``width`` (the model's logits, possibly wider than the tokenizer); none allowed
        once the matcher has failed (llguidance would allow only the end token then)."""
        import numpy as np
        import torch

        if self.matcher.is_error():
            return torch.zeros(width, dtype=torch.bool)
        bias = np.frombuffer(self.matcher.compute_logit_bias(), dtype=np.uint8)[: min(width, self.vocab_size)]
        mask = torch.zeros(width, dtype=torch.bool)
        mask[: len(bias)] = torch.from_numpy(bias > 0)
        mask[self.banned] = False
        return mask

    def consume(self, token: int) -> None:
        self.matcher.consume_token(token)


def mask_logits(logits: Any, constraints: list[Constraint | None], done: Any) -> Any:
    """Set the logits of disallowed tokens to -inf, in place, for every unfinished constrained row; returns the
    rows where no token is allowed (the grammar failed): they end there, without the end token."""
    import torch

    stuck = torch.zeros_like(done)
    for i, constraint in enumerate(constraints):
        if constraint is not None and not bool(done[i]):
            allowed = constraint.allowed(logits.shape[-1]).to(logits.device)
            if bool(allowed.any()):
                logits[i].masked_fill_(~allowed, float("-inf"))
            else:
                stuck[i] = True
    return stuck


def consume(tokens: Any, constraints: list[Constraint | None], done: Any) -> None:
    """Advance every unfinished constrained row by the token it took."""
    for i, constraint in enumerate(constraints):
        if constraint is not None and not bool(done[i]):
            constraint.consume(int(tokens[i]))


class _JoinedTokens:
    """A tokenizer whose decoder joins tokens, as llguidance's ``TokenizerWrapper`` takes it: every token's bytes
    (special tokens behind llguidance's 0xFF marker, so they never match text) and an encoder of text."""

    def __init__(self, hf_tokenizer: Any):
        self._hf = hf_tokenizer
        self.eos_token_id = hf_tokenizer.eos_token_id
        self.bos_token_id = hf_tokenizer.bos_token_id
        self.special_token_ids = list(hf_tokenizer.all_special_ids)
        pieces = hf_tokenizer.convert_ids_to_tokens(list(range(len(hf_tokenizer))))
        self.tokens = [(b"\xff" if i in self.special_token_ids else b"") + piece.encode()
                       for i, piece in enumerate(pieces)]

    def __call__(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError("text, not bytes")  # TokenizerWrapper then passes text
        return self._hf(text, add_special_tokens=False)["input_ids"]
