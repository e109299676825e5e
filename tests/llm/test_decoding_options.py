"""top_k and repetition_penalty in lmtune's local generator and server: transformers' semantics, old cache keys."""

from __future__ import annotations

import pytest
import torch

from lmtune.llm.api import CompletionBody
from lmtune.llm.cache import request_key
from lmtune.llm.generation import GenerationRequest
from lmtune.llm.local import LocalGenerator

PROMPTS = ["12+34=", "905+17=", "8+8=", "455+455="]


@pytest.fixture(scope="module")
def arith():
    return LocalGenerator("arith-lm")


def reference(generator: LocalGenerator, prompt: str, penalty: float, max_tokens: int) -> str:
    """transformers' own greedy decoding with its repetition penalty processor."""
    ids = generator.tokenizer(prompt, return_tensors="pt", add_special_tokens=False, return_token_type_ids=False)
    with torch.no_grad():
        out = generator.model.generate(**ids, do_sample=False, repetition_penalty=penalty, max_new_tokens=max_tokens,
                                       pad_token_id=generator.tokenizer.pad_token_id,
                                       eos_token_id=generator.tokenizer.eos_token_id)
    return generator.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("penalty", [1.0, 1.3, 3.0])
def test_repetition_penalty_decodes_as_transformers_does(arith, penalty):
    requests = [GenerationRequest(model="arith-lm", prompt=p, temperature=0.0, max_tokens=6,
                                  repetition_penalty=penalty) for p in PROMPTS]
    answers = [g.texts[0] for g in arith.generate_batch(requests)]  # one batch: left padding must not matter
    assert answers == [reference(arith, p, penalty, 6) for p in PROMPTS]
    if penalty == 3.0:
        plain = [g.texts[0] for g in arith.generate_batch([GenerationRequest(
            model="arith-lm", prompt=p, temperature=0.0, max_tokens=6) for p in PROMPTS])]
        assert answers != plain  # a strong penalty changes what the model says


def test_top_k_one_is_greedy_and_a_cut_keeps_samples_among_the_top_k(arith):
    greedy = arith.generate_batch([GenerationRequest(model="arith-lm", prompt=p, temperature=0.0, max_tokens=6)
                                   for p in PROMPTS])
    top1 = arith.generate_batch([GenerationRequest(model="arith-lm", prompt=p, temperature=2.0, n=4, max_tokens=6,
                                                   top_k=1, seed=7) for p in PROMPTS])
    assert all(set(t.texts) == {g.texts[0]} for t, g in zip(top1, greedy, strict=True))
    hot = GenerationRequest(model="arith-lm", prompt="12+34=", temperature=2.0, n=64, max_tokens=1, seed=1)
    ids = arith.tokenizer("12+34=", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        top2 = set(arith.model(ids).logits[0, -1].topk(2).indices.tolist())
    allowed = {arith.tokenizer.decode([t]) for t in top2}
    first = {t[:1] for t in arith.generate_batch([GenerationRequest(**{**hot.key(), "top_k": 2})])[0].texts}
    assert first <= allowed and len(first) == 2
    wide = {t[:1] for t in arith.generate_batch([hot])[0].texts}
    assert len(wide) > 2  # without the cut, temperature 2 reaches further


def test_requests_without_the_new_fields_keep_their_cache_keys():
    plain = GenerationRequest(model="m", prompt="p", temperature=0.5, seed=3)
    assert "top_k" not in plain.key() and "repetition_penalty" not in plain.key()
    assert request_key("b", plain) != request_key("b", GenerationRequest(model="m", prompt="p", temperature=0.5,
                                                                         seed=3, top_k=4))
    with pytest.raises(ValueError):
        GenerationRequest(model="m", prompt="p", top_k=-2)
    with pytest.raises(ValueError):
        GenerationRequest(model="m", prompt="p", repetition_penalty=0.0)


def test_the_server_reads_vllms_fields():
    request = CompletionBody.model_validate({"model": "m", "prompt": "p", "top_k": 5,
                                             "repetition_penalty": 1.2}).request()
    assert request.top_k == 5 and request.repetition_penalty == 1.2
    no_cut = CompletionBody.model_validate({"model": "m", "prompt": "p", "top_k": -1}).request()
    assert no_cut.top_k is None  # vLLM's "no cut"
    with pytest.raises(ValueError):
        CompletionBody.model_validate({"model": "m", "prompt": "p", "repetition_penalty": -1})
