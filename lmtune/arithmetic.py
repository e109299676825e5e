"""A synthetic arithmetic task with checkable answers, and the character tokenizer of lmtune's small model.

Nothing on this machine can download a pretrained causal LM, yet the causal code paths (LoRA SFT tables,
decoding search) need a model whose answers can be right or wrong. lmtune ships one: a 1M-parameter Llama
trained by ``scripts/train_arith_lm.py`` on these problems, committed under ``lmtune/models/arith-lm``
(``lmtune.llm.ARITH_LM_DIR``; name it ``arith-lm`` wherever lmtune takes a model).
"""

from __future__ import annotations

import random

from transformers import PreTrainedTokenizerFast

SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARACTERS = list("0123456789+-*=? ")


def make_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character: digits, operators, '=', '?', space; plus pad/bos/eos/unk."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(SPECIAL + CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>")


def make_problems(count: int, *, op: str = "+", digits: int = 3, seed: int = 0,
                  min_digits: int = 1) -> list[dict[str, str]]:
    """``count`` seeded problems ``{"prompt": "123+45=", "response": "168"}``.

    Operand lengths are drawn uniformly from ``min_digits..digits``; subtraction keeps the result
    non-negative, so every answer is a plain digit string.
    """
    if op not in "+-*" or len(op) != 1:
        raise ValueError(f"op must be '+', '-' or '*', got {op!r}")
    rng = random.Random(seed)

    def operand() -> int:
        length = rng.randint(min_digits, digits)
        return rng.randint(0 if length == 1 else 10 ** (length - 1), 10**length - 1)

    rows = []
    for _ in range(count):
        a, b = operand(), operand()
        if op == "-" and b > a:
            a, b = b, a
        answer = a + b if op == "+" else a - b if op == "-" else a * b
        rows.append({"prompt": f"{a}{op}{b}=", "response": str(answer)})
    return rows


def is_correct(prompt: str, completion: str) -> bool:
    """Whether ``completion`` starts with the right answer to ``prompt`` (e.g. "12+30=") and ends there."""
    left, op, right = _split(prompt.rstrip("="))
    answer = left + right if op == "+" else left - right if op == "-" else left * right
    digits = ""
    for ch in completion.strip():
        if not ch.isdigit():
            break
        digits += ch
    return digits == str(answer)


def _split(expression: str) -> tuple[int, str, int]:
    for op in "+-*":
        if op in expression:
            left, right = expression.split(op, 1)
            return int(left), op, int(right)
    raise ValueError(f"not an arithmetic prompt: {expression!r}")
