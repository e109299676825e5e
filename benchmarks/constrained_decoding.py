"""Which library gives ``lmtune serve`` per-step allowed-token masks for a JSON schema: set-up and per-token cost.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/constrained_decoding.py [--vocab 2048 32000]

For each candidate that imports here (llguidance, a dependency; outlines-core and lm-format-enforcer when
installed beside it, e.g. ``pip install --target /tmp/cd outlines-core lm-format-enforcer`` and
``PYTHONPATH=/tmp/cd``; xgrammar is not tried: its wheel pulls triton and apache-tvm-ffi), and for byte-level
BPE tokenizers of each vocabulary size (trained on BBC News with the ``tokenizers`` library, so no hub
download), it measures: the one-time tokenizer set-up, compiling the
AgentSampler's schema of ``lora-paper`` (enums) and of a space with int/float ranges, the mean time of one
allowed-token mask, and whether 20 replies decoded from random logits under the masks all parse and validate.
Prints a Markdown table and writes ``benchmarks/results/constrained_decoding.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmtune.files import write_atomic  # noqa: E402
from lmtune.samplers.agent.schema import config_schema, parse_reply  # noqa: E402
from lmtune.space import Categorical, Float, Int, SearchSpace, load_space  # noqa: E402

RANGES = SearchSpace((Int("rank", 1, 256, log=True), Float("learning_rate", 1e-6, 1e-2, log=True),
                      Float("dropout", 0.0, 0.3), Categorical("variant", ("lora", "dora"))), {}, "ranges")


def bpe_tokenizer(vocab: int):
    """A GPT-2-style byte-level BPE tokenizer trained on BBC News (offline), as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lmtune.finetune.data import load_dataset

    texts = [row["text"] for row in load_dataset("bbc-news", seed=0).train]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts + [json.dumps(c) for c in list(load_space("lora-small").iter_pool())], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


class LLGuidance:
    name = "llguidance"

    def __init__(self, tokenizer):
        import llguidance
        import llguidance.hf

        self.llg = llguidance
        self.tok = llguidance.hf.from_tokenizer(tokenizer)
        self.vocab = len(tokenizer)

    def start(self, schema):
        grammar = self.llg.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        matcher = self.llg.LLMatcher(self.tok, grammar)
        assert not matcher.is_error(), matcher.get_error()
        return matcher

    def allowed(self, matcher) -> np.ndarray:
        bias = np.frombuffer(matcher.compute_logit_bias(), dtype=np.uint8)[: self.vocab]
        return bias > 0

    def advance(self, matcher, token: int) -> None:
        assert matcher.consume_token(token), matcher.get_error()


class OutlinesCore:
    name = "outlines-core"

    def __init__(self, tokenizer):
        from outlines_core import Vocabulary

        from_bytes = {v: k for k, v in _bytes_to_unicode().items()}
        special = set(tokenizer.all_special_ids)
        table: dict[bytes, list[int]] = {}
        for text, index in tokenizer.get_vocab().items():
            if index not in special:
                table.setdefault(bytes(from_bytes[ch] for ch in text), []).append(index)
        self.vocabulary = Vocabulary(tokenizer.eos_token_id, table)
        self.vocab = len(tokenizer)
        self.eos = tokenizer.eos_token_id
        self.indexes = {}

    def start(self, schema):
        from outlines_core import Guide, Index
        from outlines_core.json_schema import build_regex_from_schema

        key = json.dumps(schema)
        if key not in self.indexes:  # the index is the expensive part; a server would cache it per schema
            self.indexes[key] = Index(build_regex_from_schema(key), self.vocabulary)
        return Guide(self.indexes[key])

    def allowed(self, guide) -> np.ndarray:
        mask = np.zeros(self.vocab, dtype=bool)
        mask[list(guide.get_tokens())] = True
        return mask

    def advance(self, guide, token: int) -> None:
        guide.advance(token)


class FormatEnforcer:
    name = "lm-format-enforcer"

    def __init__(self, tokenizer):
        from lmformatenforcer.integrations.transformers import build_token_enforcer_tokenizer_data

        self.data = build_token_enforcer_tokenizer_data(tokenizer)
        self.vocab = len(tokenizer)

    def start(self, schema):
        from lmformatenforcer import JsonSchemaParser, TokenEnforcer

        return [TokenEnforcer(self.data, JsonSchemaParser(schema)), []]

    def allowed(self, state) -> np.ndarray:
        mask = np.zeros(self.vocab, dtype=bool)
        mask[state[0].get_allowed_tokens(state[1])] = True
        return mask

    def advance(self, state, token: int) -> None:
        state[1].append(token)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable character table (what ByteLevel tokens are spelled in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def measure(backend_cls, tokenizer, spaces, replies: int, max_tokens: int = 160) -> dict:
    started = time.perf_counter()
    backend = backend_cls(tokenizer)
    setup = time.perf_counter() - started
    out = {"library": backend_cls.name, "vocab": len(tokenizer), "setup_s": setup}
    rng = np.random.default_rng(0)
    for space in spaces:
        schema = config_schema(space)
        started = time.perf_counter()
        backend.start(schema)
        compile_s = time.perf_counter() - started
        steps, valid = [], 0
        for _ in range(replies):
            state = backend.start(schema)
            tokens = []
            for _ in range(max_tokens):
                t0 = time.perf_counter()
                mask = backend.allowed(state)
                steps.append(time.perf_counter() - t0)
                if not mask.any():
                    break
                logits = rng.standard_normal(len(mask))
                logits[~mask] = -np.inf
                token = int(logits.argmax())
                if token == tokenizer.eos_token_id:
                    break
                tokens.append(token)
                backend.advance(state, token)
            try:
                parse_reply(tokenizer.decode(tokens), space)
                valid += 1
            except Exception:  # noqa: BLE001  (counted, not raised)
                pass
        out[space.name] = {"compile_s": compile_s, "mask_ms": 1000 * statistics.mean(steps), "valid": valid,
                           "replies": replies}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[2048, 32000])
    parser.add_argument("--replies", type=int, default=20)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/constrained_decoding.json")
    args = parser.parse_args()
    spaces = [load_space("lora-paper"), RANGES]
    rows = []
    for vocab in args.vocab:
        tokenizer = bpe_tokenizer(vocab)
        for backend in (LLGuidance, OutlinesCore, FormatEnforcer):
            try:
                rows.append(measure(backend, tokenizer, spaces, args.replies))
            except ImportError as exc:
                rows.append({"library": backend.name, "vocab": vocab, "error": f"ImportError: {exc}"[:200]})
            except Exception as exc:  # noqa: BLE001  (a library that fails here is a finding, not a crash)
                rows.append({"library": backend.name, "vocab": vocab, "error": f"{type(exc).__name__}: {exc}"[:200]})
    lines = ["| library | vocab | set-up s | lora-paper compile s | mask ms | valid | ranges compile s | mask ms | "
             "valid |", "|" + " --- |" * 9]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['library']} | {r['vocab']} | {r['error']} |" + " |" * 6)
            continue
        cells = []
        for name in ("lora-paper", "ranges"):
            m = r[name]
            cells += [f"{m['compile_s']:.3f}", f"{m['mask_ms']:.3f}", f"{m['valid']}/{m['replies']}"]
        lines.append(f"| {r['library']} | {r['vocab']} | {r['setup_s']:.2f} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    write_atomic(args.output, json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
