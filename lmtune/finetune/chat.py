"""Chat rows (``messages``: system, user and assistant turns) rendered with the tokenizer's chat template, and which
of the rendered tokens are the assistant's.

The model is trained on the text its own template makes, so the tokens it learns from are the ones it will see when
served. Which tokens carry the loss (the assistant's, by default) is found one of two ways:

* the template marks the assistant's text with ``{% generation %}`` ... ``{% endgeneration %}``: transformers'
  ``apply_chat_template(..., return_assistant_tokens_mask=True)`` returns the mask, exactly as the template's author
  drew it;
* otherwise (most published templates have no markers) each assistant turn's text is the difference between the
  conversation rendered up to and including that turn and rendered up to it with the generation prompt (what a
  server sends before the model answers); trailing whitespace after the turn's end token is not the reply. The
  full conversation is tokenized once, and a token is the assistant's when its first character lies in such a span
  (the tokenizer's character offsets), so a token merged across a boundary is never half-counted. This needs a
  template that renders a conversation's beginning as the beginning of the whole (ChatML, Llama 3, Mistral and
  Gemma templates do); one that does not (it rewrites earlier turns) is refused with the fixes.

Both give the same mask where both apply (``tests/finetune/test_chat.py``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from lmtune.errors import InputError

#: A ``{% generation %}`` block tag (any whitespace control), which transformers reads as "the assistant's text".
GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
ROLES = ("system", "user", "assistant", "tool")
#: How each method of finding the assistant's tokens is named in recipes and model cards.
MASK_METHODS = {"markers": "the template's {% generation %} markers",
                "prefixes": "each assistant turn rendered after the conversation before it"}


@dataclass(frozen=True)
class RenderedChat:
    """One conversation as token ids; ``assistant[i]`` says whether token i is the assistant's, ``reply_start`` is
    where the last assistant turn begins (generation's prompt is everything before it)."""

    ids: list[int]
    assistant: list[bool]
    reply_start: int


def chat_template(tokenizer, model: str) -> str:
    """The tokenizer's chat template, or ``InputError("dataset", ...)`` naming the two ways out."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default one renders chats
        template = template.get("default")
    if not template:
        raise InputError("dataset", f"{model} has no chat template, so `messages` rows cannot be rendered; pass a "
                         "`model` whose tokenizer has one (an instruct or chat model), or convert the rows to "
                         "prompt/completion columns (the loss is then on the completion)")
    return template


def describe_template(template: str) -> dict[str, Any]:
    """What a recipe says about a template: its hash (the same text gives the same hash) and how the assistant's
    tokens are found in it."""
    method = "markers" if GENERATION_TAG.search(template) else "prefixes"
    return {"sha256": hashlib.sha256(template.encode()).hexdigest(), "assistant_tokens": MASK_METHODS[method],
            "method": method}


def is_chat(row: dict, messages: str = "messages", prompt: str = "prompt") -> bool:
    """A row of turns: ``messages``, or TRL's conversational prompt/completion (lists of turns)."""
    return messages in row or isinstance(row.get(prompt), list)


def chat_turns(row: dict, messages: str, prompt: str, completion: str, where: str) -> list[dict]:
    """A chat row's turns, checked (``check_messages``): its ``messages``, or its prompt turns then its completion
    turns (TRL's conversational prompt/completion)."""
    turns = row.get(messages)
    if turns is None and isinstance(row.get(prompt), list):
        turns = list(row[prompt]) + list(row.get(completion) or [])
    check_messages(turns, where)
    return [dict(turn) for turn in turns]


def check_messages(messages: Any, where: str) -> None:
    """A chat row: a list of ``{"role", "content"}`` turns of known roles, ending with the assistant's (the reply
    that exact match generates); ``InputError("dataset", ...)`` naming the row otherwise."""
    if not isinstance(messages, list) or not messages:
        raise InputError("dataset", f"{where}: `messages` must be a non-empty list of turns")
    for turn in messages:
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise InputError("dataset", f"{where}: each turn needs a role ({', '.join(ROLES)}) and text content; "
                             f"got {str(turn)[:80]}")
    if messages[-1]["role"] != "assistant":
        raise InputError("dataset", f"{where}: the last turn must be the assistant's (the reply a model learns and "
                         f"is scored on); it is {messages[-1]['role']!r}")


def render_chat(tokenizer, messages: list[dict], template: str) -> RenderedChat:
    """Token ids of ``messages`` under ``template`` and which of them are the assistant's (module docstring)."""
    if GENERATION_TAG.search(template):
        encoded = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
        assistant = [bool(flag) for flag in encoded["assistant_masks"]]
        return RenderedChat(list(encoded["input_ids"]), assistant, _last_run_start(assistant))
    text, spans = _assistant_spans(tokenizer, messages, template)
    if not getattr(tokenizer, "is_fast", False):
        raise InputError("dataset", "the tokenizer gives no character offsets and its chat template has no "
                         "{% generation %} markers, so the assistant's tokens cannot be told apart; use `loss_on` "
                         "all, or convert the rows to prompt/completion columns")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = [start for start, _ in encoded["offset_mapping"]]
    assistant = [any(begin <= start < end for begin, end in spans) for start in starts]
    return RenderedChat(list(encoded["input_ids"]), assistant, _last_run_start(assistant))


def _assistant_spans(tokenizer, messages: list[dict], template: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant turn in it."""

    def render(turns: list[dict], prompt: bool) -> str:
        return tokenizer.apply_chat_template(turns, chat_template=template, tokenize=False,
                                             add_generation_prompt=prompt) if turns else ""

    text = render(messages, False)
    spans = []
    for k, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        before, through = render(messages[:k], True), render(messages[: k + 1], False)
        if not (through.startswith(before) and text.startswith(through)):
            raise InputError("dataset", "the chat template renders a conversation's beginning differently from the "
                             "whole (it rewrites earlier turns), so the assistant's tokens cannot be found by "
                             "rendering; add {% generation %} markers to the template, use `loss_on` all, or convert "
                             "the rows to prompt/completion columns")
        spans.append((len(before), len(through.rstrip())))
    return text, spans


def _last_run_start(assistant: list[bool]) -> int:
    """Where the last run of assistant tokens begins (the reply exact match generates)."""
    end = max((i for i, flag in enumerate(assistant) if flag), default=None)
    if end is None:
        raise InputError("dataset", "a conversation rendered with the chat template has no assistant tokens; the "
                         "template may drop assistant turns, or the reply may be empty")
    start = end
    while start > 0 and assistant[start - 1]:
        start -= 1
    return start
