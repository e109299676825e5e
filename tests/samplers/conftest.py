"""Shared by the sampler tests: tiny encoders saved as a user would save them."""

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from lmtune.llm import default_encoder_path


@pytest.fixture(scope="session")
def encoders(tmp_path_factory):
    """Folders holding a tiny bidirectional and a tiny causal model, saved as a user would."""
    root = tmp_path_factory.mktemp("encoders")
    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path())
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=64, max_position_embeddings=512))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=512))
    for name, model in (("bert", bert), ("llama", llama)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return {"bert": str(root / "bert"), "llama": str(root / "llama")}
