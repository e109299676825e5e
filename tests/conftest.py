"""Shared fixtures: offline hub, the bundled MiniLM tokenizer, and tiny models built from configs."""

import logging
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


@pytest.fixture(scope="session")
def agent_endpoint():
    """``lmtune serve``'s app with the committed tiny chat model (agent-lm) on 127.0.0.1: constrained decoding on."""
    from lmtune.llm.local import LocalGenerator
    from lmtune.llm.server import make_app
    from tests.servers import Server

    with Server(make_app(LocalGenerator("agent-lm"))) as url:
        yield url


#: AgentSampler options that keep tests fast with agent-lm: sampled replies (greedy ones of an untrained model
#: hardly depend on the prompt), a few Analyzer tokens, no free-text reason before the config.
AGENT_TEST_OPTIONS = {"model": "agent-lm", "temperature": 1.0, "analyzer_tokens": 8, "reason_chars": 0}


@pytest.fixture(autouse=True)
def _lmtune_logger_restored():
    """A CLI call in-process points lmtune's logger at its console and stops propagation (``cli.progress.log_to``);
    put it back after each test, so a later test's ``caplog`` does not depend on which tests ran before it."""
    logger = logging.getLogger("lmtune")
    saved = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]
