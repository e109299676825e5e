"""Candidate encoders for model selection on BBC News, made offline from the bundled MiniLM (all-MiniLM-L6-v2).

    python scripts/make_minilm_family.py --output lmtune-out/select-curves/minilm-family

Writes eight BERT encoders with MiniLM's tokenizer: ``minilm-l1`` .. ``minilm-l6`` keep the embeddings and the
first 1..6 transformer layers of MiniLM (pretrained weights, fewer layers), and ``random-l2``, ``random-l6``
are MiniLM's architecture with 2 and 6 layers freshly initialised (seed 0): candidates that know nothing.
Nothing is trained here; `lmtune select --models ... --dataset bbc-news` fine-tunes each one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from lmtune.llm import default_encoder_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("lmtune-out/select-curves/minilm-family"))
    args = parser.parse_args()
    source = default_encoder_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    for layers in range(1, 7):
        model = BertModel.from_pretrained(source)
        model.encoder.layer = model.encoder.layer[:layers]
        model.config.num_hidden_layers = layers
        _save(model, tokenizer, args.output / f"minilm-l{layers}")
    for layers in (2, 6):
        torch.manual_seed(0)
        config = BertConfig.from_pretrained(source, num_hidden_layers=layers)
        _save(BertModel(config), tokenizer, args.output / f"random-l{layers}")


def _save(model, tokenizer, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    print(f"{path}: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)


if __name__ == "__main__":
    main()
