"""Train lmtune's small arithmetic causal LM from scratch on CPU and save it to lmtune/models/arith-lm.

    .venv/bin/python scripts/train_arith_lm.py --steps 2500 --output lmtune/models/arith-lm

Smaller or shorter-trained relatives (candidates for model selection, benchmarks/data/curves/README.md):

    .venv/bin/python scripts/train_arith_lm.py --hidden-size 64 --layers 2 --steps 800 --checkpoints 200 \
        --output lmtune-out/arith-family/h64-l2

saves the final model to ``--output`` and the model after 200 steps to ``<output>-step200``.

The model (a 4-layer Llama, about 0.8M parameters, character tokens) learns addition of numbers up to
three digits and subtraction up to two. It is deliberately imperfect: greedy decoding solves most but not
all 3-digit additions, so sampling temperature, the number of samples n and max_tokens really change the
success rate and cost of decoding, and LoRA fine-tuning on harder problems has something to learn.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch
from _tiny_lm import padded, tiny_llama, train, training_parser

from lmtune.arithmetic import is_correct, make_problems, make_tokenizer


def training_rows(count: int, seed: int) -> list[dict[str, str]]:
    """Addition with 1-3 digit operands (70%) and subtraction with 1-2 digits (30%), shuffled."""
    rows = make_problems(int(count * 0.7), op="+", digits=3, seed=seed)
    rows += make_problems(count - len(rows), op="-", digits=2, seed=seed + 1)
    random.Random(seed).shuffle(rows)
    return rows


@torch.no_grad()
def greedy_accuracy(model, tokenizer, rows, max_new_tokens: int = 6) -> float:
    model.eval()
    tokenizer.padding_side = "left"
    batch = tokenizer([r["prompt"] for r in rows], return_tensors="pt", padding=True, add_special_tokens=False,
                      return_token_type_ids=False)
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    model.train()
    return sum(is_correct(r["prompt"], t) for r, t in zip(rows, texts, strict=True)) / len(rows)


def main() -> None:
    parser = training_parser(__doc__.splitlines()[0], steps=2500, batch_size=128, threads=2,
                             output="lmtune/models/arith-lm")
    parser.add_argument("--hidden-size", type=int, default=128, help="width; heads = width / 32")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--checkpoints", default="", help="steps at which to save <output>-step<N> as well")
    args = parser.parse_args()
    checkpoints = {int(s) for s in args.checkpoints.split(",") if s.strip()}

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    tokenizer = make_tokenizer()
    model = tiny_llama(tokenizer, hidden_size=args.hidden_size, intermediate_size=3 * args.hidden_size,
                       layers=args.layers, heads=max(1, args.hidden_size // 32), positions=32)
    rows = training_rows(args.steps * args.batch_size, args.seed)
    held_out = make_problems(500, op="+", digits=3, min_digits=3, seed=10_000 + args.seed)
    started = time.perf_counter()

    def batch(step: int):
        chunk = rows[(step - 1) * args.batch_size: step * args.batch_size]
        return padded([(r["prompt"], r["response"]) for r in chunk], tokenizer)

    def after_step(step: int, loss: float) -> None:
        if step % 250 == 0 or step == args.steps:
            accuracy = greedy_accuracy(model, tokenizer, held_out[:200])
            print(f"step {step}/{args.steps} loss {loss:.4f} greedy 3-digit addition {accuracy:.3f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
        if step in checkpoints and step != args.steps:
            save(model, tokenizer, args, step, loss, time.perf_counter() - started, held_out,
                 args.output.with_name(f"{args.output.name}-step{step}"))

    loss = train(model, tokenizer, steps=args.steps, lr=args.lr, batch=batch, after_step=after_step)
    save(model, tokenizer, args, args.steps, loss, time.perf_counter() - started, held_out, args.output)


def save(model, tokenizer, args, step: int, loss: float, seconds: float, held_out, output: Path) -> None:
    """The model, its tokenizer and ``training.json`` (what it was trained on, how long, how well it adds)."""
    accuracy = greedy_accuracy(model, tokenizer, held_out)
    tokenizer.padding_side = "right"
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    report = {"steps": step, "schedule_steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
              "seed": args.seed, "hidden_size": args.hidden_size, "layers": args.layers,
              "train_seconds": round(seconds, 1), "threads": args.threads,
              "parameters": sum(p.numel() for p in model.parameters()),
              "greedy_accuracy_3digit_addition": accuracy, "held_out": len(held_out),
              "final_loss": round(loss, 4), "ppl": round(math.exp(loss), 3)}
    (output / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
