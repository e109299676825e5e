"""Build lmtune's tiny chat model for driving ``AgentSampler`` offline and save it to lmtune/models/agent-lm.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/build_agent_lm.py --output lmtune/models/agent-lm

No chat model can be downloaded here, and none ships in a package. This builds one that can *speak* the
agent's protocol, not one that advises: a GPT-2-style byte-level BPE tokenizer (so it can spell any JSON and any
text) trained on BBC News articles, lmtune's prompt templates and JSON configs of the built-in spaces; a
ChatML chat template; and a two-layer Llama with random weights (seeded). Served by ``lmtune serve`` with a
``response_format``, its replies are schema-valid JSON by construction (``lmtune.llm.constrained``); their
content is a deterministic function of the prompt, about as informed as a random draw. It exists so the
sampler's machinery (endpoint, constrained decoding, validation, retries, fallback) runs in tests and
benchmarks on a laptop; measure a real model (e.g. ``qwen2.5:7b-instruct`` in Ollama) for advice.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmtune.finetune.data import load_dataset  # noqa: E402
from lmtune.samplers.agent.prompts import BUILT_IN  # noqa: E402
from lmtune.space import PRESETS  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def corpus(seed: int) -> list[str]:
    """English news, the agent's prompts, and JSON replies of configs of every preset space."""
    texts = [row["text"] for row in load_dataset("bbc-news", seed=0).train]
    texts += [path.read_text() for path in sorted(BUILT_IN.glob("*.txt"))]
    rng = random.Random(seed)
    for make in PRESETS.values():
        space = make()
        for _ in range(2000):
            config = space.pool_config(rng.randrange(space.pool_size))
            texts.append(json.dumps({"reason": "try this", "config": config}, separators=(",", ":")))
    return texts


def build_tokenizer(vocab_size: int, seed: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(seed), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "lmtune/models/agent-lm")
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(args.vocab, args.seed)
    torch.manual_seed(args.seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    args.output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    (args.output / "training.json").write_text(json.dumps(
        {"script": "scripts/build_agent_lm.py", "vocab": len(tokenizer), "seed": args.seed, "trained": False,
         "parameters": sum(p.numel() for p in model.parameters())}, indent=1) + "\n")
    print(f"{args.output}: {sum(p.numel() for p in model.parameters()):,} parameters, vocabulary {len(tokenizer)}")


if __name__ == "__main__":
    main()
