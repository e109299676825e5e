"""Exact match: the share of greedy generations that equal the reference reply."""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from lmtune.finetune.batches import chunks, pad_sequences
from lmtune.finetune.device import Precision
from lmtune.finetune.encode import CausalExample


@torch.no_grad()
def exact_match(model, tokenizer, examples: list[CausalExample], precision: Precision, max_new_tokens: int,
                batch_size: int) -> float:
    """Share of greedy generations equal to the reference reply after whitespace normalisation.

    Generation starts from everything before the reply (the prompt, or a chat up to its last assistant turn) and
    stops at the end-of-sequence token or at a special token that ends a reference reply (a chat template's end of
    turn). Both sides are decoded by the tokenizer, so its normalisation (e.g. lower-casing) is not a miss.
    """
    device = next(model.parameters()).device
    special = set(tokenizer.all_special_ids)
    stops = sorted({tokenizer.eos_token_id} | {t for x in examples for t in x.reply if t in special})
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=stops)
    hits = 0
    for chunk in chunks(examples, batch_size):
        input_ids, mask = pad_sequences([x.prompt for x in chunk], tokenizer.pad_token_id, device, left=True)
        with precision.context(device):
            output = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
        for generated, example in zip(output[:, input_ids.size(1):], chunk, strict=True):
            hits += _normalise(tokenizer.decode(generated, skip_special_tokens=True)) == _normalise(
                tokenizer.decode(example.reply, skip_special_tokens=True))
    return hits / len(examples)


def _normalise(text: str) -> str:
    return " ".join(text.split())
