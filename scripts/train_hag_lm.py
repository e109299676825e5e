"""Train lmtune's small per-input-decoding model, hag-lm, from scratch on CPU; save it to lmtune/models/hag-lm.

    PYTHONPATH=. .venv/bin/python scripts/train_hag_lm.py --steps 3000 --output lmtune/models/hag-lm

A 3-layer Llama (about 0.35M parameters) with one token per printable ASCII character, trained on fresh
samples of the three kinds of ``hag-mix`` input (``lmtune.hag.task``) answered by a deliberately noisy teacher:
thin typos on exact answers, Zipf-skewed letter choices on open-ended requests, and a structured distractor on
long ``copy`` inputs. So the decoding that serves an input best differs by kind and by length, which is what
``lmtune hag`` needs to learn. Trained as ``scripts/train_arith_lm.py`` is (``scripts/_tiny_lm.py``): the loss
scores only the answer and its end token, AdamW with cosine decay.
"""

from __future__ import annotations

import json
import random
import string
import time

import torch
from _tiny_lm import padded, tiny_llama, train, training_parser
from transformers import PreTrainedTokenizerFast

from lmtune.hag.task import KINDS, mix_metric, random_instance, teacher_response

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
    pairs = []
    for _ in range(size):
        instance = random_instance(rng.choice(KINDS), rng)
        pairs.append((instance["prompt"], teacher_response(instance, rng)))
    return padded(pairs, tokenizer)


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
    args = training_parser(__doc__.splitlines()[0], steps=3000, batch_size=64, threads=1,
                           output="lmtune/models/hag-lm").parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    tokenizer = make_tokenizer()
    model = tiny_llama(tokenizer, hidden_size=96, intermediate_size=256, layers=3, heads=4, positions=128)
    rng = random.Random(args.seed)
    started = time.perf_counter()

    def after_step(step: int, loss: float) -> None:
        if step % 500 == 0 or step == args.steps:
            print(f"step {step}/{args.steps} loss {loss:.4f} ({time.perf_counter() - started:.0f} s)", flush=True)

    loss = train(model, tokenizer, steps=args.steps, lr=args.lr, batch=lambda _: batch(rng, args.batch_size, tokenizer),
                 after_step=after_step)
    seconds = time.perf_counter() - started
    scores = check(model, tokenizer, seed=10_000 + args.seed)
    args.output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    report = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
              "train_seconds": round(seconds, 1), "threads": args.threads,
              "parameters": sum(p.numel() for p in model.parameters()), "final_loss": round(loss, 4),
              "check_60_per_kind_8_samples": scores}
    (args.output / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
