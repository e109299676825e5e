"""What scripts/train_arith_lm.py and scripts/train_hag_lm.py share: a small Llama trained from scratch on CPU on
prompt-answer pairs, the loss on the answer and its end token only, AdamW with warmup and cosine decay."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, get_cosine_schedule_with_warmup

IGNORE = -100


def training_parser(description: str, *, steps: int, batch_size: int, threads: int, output: str
                    ) -> argparse.ArgumentParser:
    """The options both scripts take, with each one's defaults (learning rate 3e-3 and seed 0 for both)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=threads)
    parser.add_argument("--output", type=Path, default=Path(output))
    return parser


def tiny_llama(tokenizer, *, hidden_size: int, intermediate_size: int, layers: int, heads: int,
               positions: int) -> LlamaForCausalLM:
    """A Llama of random weights (torch's seed) with tied embeddings, sized for ``tokenizer``'s vocabulary."""
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=positions, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config)


def padded(pairs: list[tuple[str, str]], tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids of ``prompt + answer + end`` and labels that score only the answer and its end."""
    ids, labels = [], []
    for prompt_text, answer_text in pairs:
        prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        answer = tokenizer(answer_text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids.append(prompt + answer)
        labels.append([IGNORE] * len(prompt) + answer)
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id
    return (torch.tensor([x + [pad] * (width - len(x)) for x in ids]),
            torch.tensor([y + [IGNORE] * (width - len(y)) for y in labels]))


def train(model: LlamaForCausalLM, tokenizer, *, steps: int, lr: float,
          batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
          after_step: Callable[[int, float], None]) -> float:
    """``steps`` optimizer steps on ``batch(step)`` (steps count from 1), then ``after_step(step, loss)``; the last
    loss. AdamW (weight decay 0.01), 5% warmup then cosine decay, gradients clipped at norm 1."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    scheduler = get_cosine_schedule_with_warmup(optimizer, steps // 20, steps)
    model.train()
    for step in range(1, steps + 1):
        ids, labels = batch(step)
        logits = model(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id)).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                               ignore_index=IGNORE)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        after_step(step, loss.item())
    return loss.item()
