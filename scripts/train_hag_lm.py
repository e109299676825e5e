"""Train lmtune's small per-input-decoding model, hag-lm, from scratch on CPU; save it to lmtune/models/hag-lm.

    PYTHONPATH=. .venv/bin/python scripts/train_hag_lm.py --steps 3000 --output lmtune/models/hag-lm

A 3-layer Llama (about 0.35M parameters) with one token per printable ASCII character, trained on fresh
samples of the three kinds of ``hag-mix`` input (``lmtune.hag.task``) answered by a deliberately noisy teacher:
thin typos on exact answers, Zipf-skewed letter choices on open-ended requests, and a structured distractor on
long ``copy`` inputs. So the decoding that serves an input best differs by kind and by length, which is what
``lmtune hag`` needs to learn. The approach is ``scripts/train_arith_lm.py``'s: the loss scores only the
answer and its end token, AdamW with cosine decay.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, get_cosine_schedule_with_warmup

from lmtune.hag.task import KINDS, mix_metric, random_instance, teacher_response

IGNORE = -100
SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>"]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character and newline; plus pad/bos/eos/unk."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    characters = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
    vocab = {token: i for i, token in enumerate(SPECIAL + characters)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), "isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>")


def batch(rng: random.Random, size: int, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and labels (answer and end token scored) of ``size`` fresh teacher samples."""
    ids, labels = [], []
    for _ in range(size):
        instance = random_instance(rng.choice(KINDS), rng)
        prompt = tokenizer(instance["prompt"], add_special_tokens=False)["input_ids"]
        answer = tokenizer(teacher_response(instance, rng), add_special_tokens=False)["input_ids"]
        answer.append(tokenizer.eos_token_id)
        ids.append(prompt + answer)
        labels.append([IGNORE] * len(prompt) + answer)
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id
    return (torch.tensor([x + [pad] * (width - len(x)) for x in ids]),
            torch.tensor([y + [IGNORE] * (width - len(y)) for y in labels]))


@torch.no_grad()
def check(model, tokenizer, seed: int, per_kind: int = 60) -> dict[str, float]:
    """Greedy and temperature-1 scores (8 samples) per kind on fresh instances: the gap the task relies on."""
    model.eval()
    tokenizer.padding_side = "left"
    rng = random.Random(seed)
    out = {}
    for kind in KINDS:
        rows = [random_instance(kind, rng) for _ in range(per_kind)]
        inputs = tokenizer([row["prompt"] for row in rows], return_tensors="pt", padding=True,
                           add_special_tokens=False, return_token_type_ids=False)
        for label, sample in (("greedy", False), ("t1", True)):
            options = {"do_sample": True, "num_return_sequences": 8, "temperature": 1.0, "top_k": 0,
                       "top_p": 1.0} if sample else {"do_sample": False}
            generated = model.generate(**inputs, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id,
                                       eos_token_id=tokenizer.eos_token_id, **options)
            texts = tokenizer.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            if not sample:  # greedy: the same answer 8 times
                texts = [t for t in texts for _ in range(8)]
            scores = [mix_metric(row, texts[8 * i:8 * i + 8]) for i, row in enumerate(rows)]
            out[f"{kind}_{label}"] = round(sum(scores) / len(scores), 3)
    tokenizer.padding_side = "right"
    model.train()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("lmtune/models/hag-lm"))
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    tokenizer = make_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=96, intermediate_size=256, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    rng = random.Random(args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.steps // 20, args.steps)
    started = time.perf_counter()
    model.train()
    for step in range(1, args.steps + 1):
        ids, labels = batch(rng, args.batch_size, tokenizer)
        logits = model(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id)).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                               ignore_index=IGNORE)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 500 == 0 or step == args.steps:
            print(f"step {step}/{args.steps} loss {loss.item():.4f} ({time.perf_counter() - started:.0f} s)",
                  flush=True)
    seconds = time.perf_counter() - started
    scores = check(model, tokenizer, seed=10_000 + args.seed)
    args.output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    report = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
              "train_seconds": round(seconds, 1), "threads": args.threads,
              "parameters": sum(p.numel() for p in model.parameters()), "final_loss": round(loss.item(), 4),
              "check_60_per_kind_8_samples": scores}
    (args.output / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
