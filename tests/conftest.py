"""Shared fixtures: offline hub, the bundled MiniLM tokenizer, and tiny models built from configs."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported anywhere: never touch the network

import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
)

from lmtune.llm import default_encoder_path

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}


@pytest.fixture(scope="session")
def tokenizer():
    """MiniLM's BERT tokenizer; [SEP] doubles as eos so it can end causal responses."""
    return AutoTokenizer.from_pretrained(default_encoder_path(), eos_token="[SEP]")


@pytest.fixture(scope="session")
def tiny_bert(tokenizer):
    """A 2-label BERT classifier small enough to train in well under a second."""
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, num_labels=2, **TINY))


@pytest.fixture(scope="session")
def tiny_llama(tokenizer):
    """A 2-layer Llama; the wide init lets its frozen output layer express a confident next token."""
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=tokenizer.vocab_size, num_key_value_heads=2,
                                        max_position_embeddings=64, initializer_range=0.3, **TINY))


@pytest.fixture
def sentiment_rows():
    """A separable two-class toy set: label 1 rows say "good", label 0 rows say "bad"."""
    return ([{"text": f"good movie number {i}", "label": 1} for i in range(12)]
            + [{"text": f"bad film {i}", "label": 0} for i in range(12)])


@pytest.fixture
def qa_rows():
    return [{"prompt": f"question {i}", "response": "yes"} for i in range(8)]
