"""Rows to token ids, once per run: classification rows as (ids, label), causal rows as ``CausalExample``.

A causal example is one token sequence with a label per token, as transformers' ``labels`` (the token itself where it
carries the loss, ``IGNORE_INDEX`` elsewhere; position 0 is never predicted), and the position where the reply that
exact match generates begins. ``prompt``/``response`` rows (and TRL's ``prompt``/``completion``) are the prompt
tokenized as text, then the response and the end-of-sequence token, the loss on the response; ``messages`` rows are
rendered with the tokenizer's chat template (``lmtune.finetune.chat``), the loss on the assistant's tokens. With
``loss_on="all"`` every token carries it.
"""

from __future__ import annotations

from typing import NamedTuple

from lmtune.errors import InputError
from lmtune.finetune.chat import chat_template, describe_template, render_chat

IGNORE_INDEX = -100  # label value that cross-entropy skips: prompt and padding tokens
LOSS_ON: tuple[str, ...] = ("assistant", "all")


class CausalExample(NamedTuple):
    """One encoded causal-LM example (module docstring); ``targets`` is how many of its positions carry the loss."""

    ids: list[int]
    labels: list[int]
    reply_start: int
    targets: int

    @property
    def prompt(self) -> list[int]:
        """What generation starts from."""
        return self.ids[: self.reply_start]

    @property
    def reply(self) -> list[int]:
        """What generation is compared with."""
        return self.ids[self.reply_start:]


def causal_example(ids: list[int], scored: list[bool], reply_start: int, max_length: int) -> CausalExample:
    """``ids`` trimmed to ``max_length`` as ``fit_length`` trims a prompt and its reply; ``scored`` says which tokens
    carry the loss."""
    prompt, reply = fit_length(ids[:reply_start], ids[reply_start:], max_length)
    cut = reply_start - len(prompt)
    kept = slice(cut, cut + len(prompt) + len(reply))
    ids, scored = ids[kept], scored[kept]
    labels = [token if flag else IGNORE_INDEX for token, flag in zip(ids, scored, strict=True)]
    return CausalExample(ids, labels, len(prompt), sum(label != IGNORE_INDEX for label in labels[1:]))


def fit_length(prompt: list[int], response: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Trim a prompt/response pair to ``max_length`` tokens, keeping the end of the prompt (up to half the budget
    when the response is long) and the start of the response, so some response is always scored."""
    if len(prompt) + len(response) <= max_length:
        return prompt, response
    keep = min(len(prompt), max(max_length - len(response), max_length // 2))
    return prompt[len(prompt) - keep:], response[: max_length - keep]


def encode_rows(rows: list[dict], tokenizer, task: str, max_length: int, loss_on: str = "assistant",
                template: str | None = None) -> list:
    """Tokenize ``rows`` of ``task`` within ``max_length``; ``template`` is the chat template for ``messages``
    rows (``lmtune.finetune.chat.chat_template``)."""
    if loss_on not in LOSS_ON:
        raise InputError("loss_on", f"must be one of {', '.join(LOSS_ON)}, got {loss_on!r}")
    if task == "classification":
        ids = tokenizer([row["text"] for row in rows], truncation=True, max_length=max_length,
                        return_token_type_ids=False)["input_ids"]
        return [(text, row["label"]) for text, row in zip(ids, rows, strict=True)]
    if rows and "messages" in rows[0]:
        if template is None:
            raise InputError("dataset", "`messages` rows need the model's chat template")
        return [_chat_example(tokenizer, row["messages"], template, max_length, loss_on) for row in rows]
    prompts = tokenizer([row["prompt"] for row in rows], return_token_type_ids=False)["input_ids"]
    responses = tokenizer([row["response"] for row in rows], add_special_tokens=False,
                          return_token_type_ids=False)["input_ids"]
    eos = tokenizer.eos_token_id
    examples = []
    for prompt, response in zip(prompts, responses, strict=True):
        prompt, response = fit_length(prompt, response + [eos], max_length)
        scored = [loss_on == "all"] * len(prompt) + [True] * len(response)
        examples.append(causal_example(prompt + response, scored, len(prompt), max_length))
    return examples


def _chat_example(tokenizer, messages: list[dict], template: str, max_length: int, loss_on: str) -> CausalExample:
    rendered = render_chat(tokenizer, messages, template)
    scored = [True] * len(rendered.ids) if loss_on == "all" else rendered.assistant
    return causal_example(rendered.ids, scored, rendered.reply_start, max_length)


def check_encoding(rows: list[dict], task: str, model: str, model_path: str, *, max_length: int, loss_on: str,
                   packing: bool) -> dict | None:
    """Refuse what a run could not encode, before anything is stored: loss tokens or packing of a classifier, chat
    rows for a model without a chat template, a template whose assistant tokens cannot be found. Encodes the first
    rows as a run will. Returns the chat template's description for chat rows (``chat.describe_template``)."""
    if task != "causal":
        if loss_on != "assistant":
            raise InputError("loss_on", f"chooses which tokens of causal data carry the loss; {task} trains on labels")
        if packing:
            raise InputError("packing", f"packs causal examples; a {task} batch has one example per row")
        return None
    if not rows or "messages" not in rows[0]:
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    template = chat_template(tokenizer, model)
    encode_rows(rows[:8], tokenizer, task, max_length, loss_on, template)
    return describe_template(template)


def loss_tokens(task: str, data_format: str, loss_on: str, template: dict | None = None) -> str:
    """Which tokens carried the loss, in words (recipes and model cards)."""
    if task == "classification":
        return "the label (the classifier head's cross-entropy)"
    if loss_on == "all":
        return "every token of each example (`loss_on` all)"
    if data_format == "chat":
        how = template["assistant_tokens"] if template else "the chat template"
        return f"each assistant turn's tokens and its end-of-turn token (found from {how})"
    return "the response (or completion) tokens and the end-of-sequence token"
