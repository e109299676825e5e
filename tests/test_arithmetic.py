"""The arithmetic task and lmtune's committed small model that solves it (most of the time)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmtune.arithmetic import is_correct, make_problems, make_tokenizer
from lmtune.finetune.data import load_dataset
from lmtune.llm import ARITH_LM_DIR, resolve_model


def test_problems_are_seeded_and_answers_check():
    rows = make_problems(50, op="-", digits=3, seed=3)
    assert rows == make_problems(50, op="-", digits=3, seed=3) != make_problems(50, op="-", digits=3, seed=4)
    for row in rows:
        a, b = map(int, row["prompt"].rstrip("=").split("-"))
        assert int(row["response"]) == a - b >= 0
        assert is_correct(row["prompt"], row["response"] + "<eos>junk")
        assert not is_correct(row["prompt"], row["response"] + "7")
    assert is_correct("12*3=", " 36") and not is_correct("12*3=", "")
    with pytest.raises(ValueError, match="op must be"):
        make_problems(1, op="/")


def test_tokenizer_is_one_token_per_character_and_round_trips():
    tokenizer = make_tokenizer()
    ids = tokenizer("907-196=", add_special_tokens=False)["input_ids"]
    assert len(ids) == 8 and tokenizer.decode(ids) == "907-196="


def test_arith_sub3_dataset_splits():
    splits = load_dataset("arith-sub3")
    assert splits.task == "causal"
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (1750, 250, 500)
    assert all(row["prompt"].count("-") == 1 for row in splits.validation)


def test_committed_model_adds_three_digit_numbers_but_not_perfectly():
    assert resolve_model("arith-lm") == str(ARITH_LM_DIR)
    tokenizer = AutoTokenizer.from_pretrained(ARITH_LM_DIR, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(ARITH_LM_DIR).eval()
    rows = make_problems(100, op="+", digits=3, min_digits=3, seed=123)
    batch = tokenizer([r["prompt"] for r in rows], return_tensors="pt", padding=True, return_token_type_ids=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    accuracy = sum(is_correct(r["prompt"], t) for r, t in zip(rows, texts, strict=True)) / len(rows)
    assert 0.75 <= accuracy < 1.0  # 0.906 on 500 held-out problems when trained (training.json)
