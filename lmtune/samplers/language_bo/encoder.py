"""The frozen language model of language-aided BO, driven at the input-embedding level.

Language-aided BO ("Efficient Hyper-parameter Search for LoRA via Language-aided Bayesian Optimization") embeds
every candidate config's text with a frozen LM. ``FrozenEncoder`` runs blocks of positions after fixed context
keys/values (``forward_block``), which is what lets ``embeddings.TextPool`` encode a shared prefix once and
append the learnable token ψ to stored suffixes without re-running them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmtune._compat import cache_classes, is_masked_lm_type, with_cache
from lmtune.errors import InputError
from lmtune.llm import default_encoder_path

Cache, DynamicLayer = cache_classes()

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class _ContextLayer(DynamicLayer):
    """A cache layer holding fixed context keys/values.

    ``update`` returns context + new states and remembers the new ones in ``added`` but never
    grows, so one context serves any number of forward passes (and autograd graphs).
    """

    def __init__(self, keys: torch.Tensor | None = None, values: torch.Tensor | None = None):
        super().__init__()
        self.context = (keys, values)
        self.added: tuple[torch.Tensor, torch.Tensor] | None = None
        if keys is not None:
            self.keys, self.values = keys, values
            self.dtype, self.device = keys.dtype, keys.device
            self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        self.added = (key_states, value_states)
        keys, values = self.context
        if keys is None:
            return key_states, value_states
        return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)


KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (keys, values), each (batch, heads, seq, head_dim)


class FrozenEncoder:
    """A Hugging Face model (id or folder) used frozen, driven at the input-embedding level."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, name: str, identity: str, causal: bool):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.identity = identity
        self.causal = causal
        #: Forward passes run so far; tests use it to check that cache hits skip the model.
        self.calls = 0
        self._leading, self._trailing = _special_tokens(tokenizer)

    @classmethod
    def load(cls, name_or_path: str | Path | None = None, *, device: str = "cpu", dtype: str = "float32"):
        """Load model and tokenizer from a hub id or a folder; causal LMs are told apart from encoders
        by their model type (types with a masked-LM head are bidirectional encoders)."""
        from transformers import AutoModel, AutoTokenizer

        name = str(name_or_path or default_encoder_path())
        config = check_encoder(name, dtype)
        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
            model = AutoModel.from_pretrained(name, dtype=DTYPES[dtype]).to(device)
        except (OSError, ValueError) as exc:
            raise InputError("encoder", f"cannot load {name!r}: {' '.join(str(exc).split())[:300]}") from None
        causal = not is_masked_lm_type(config.model_type)
        identity = json.dumps({"name": name, "revision": getattr(config, "_commit_hash", None),
                               "files": _folder_fingerprint(name), "dtype": dtype}, sort_keys=True)
        return cls(model, tokenizer, name=name, identity=identity, causal=causal)

    # -- facts about the model ------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def max_positions(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    def mean_token_embedding(self) -> torch.Tensor:
        """A neutral starting point for ψ: the mean input embedding of the vocabulary."""
        return self.model.get_input_embeddings().weight.float().mean(0)

    def token_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def special_ids(self) -> tuple[list[int], list[int]]:
        """The special tokens the tokenizer puts before and after a text ([CLS]/[SEP], BOS, ...)."""
        return list(self._leading), list(self._trailing)

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids.to(self.device))

    # -- running blocks -------------------------------------------------------------------------
    def forward_block(
        self, embeds: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor, context: KV | None
    ) -> tuple[torch.Tensor, KV]:
        """Run ``embeds`` (batch, q, width) as new positions after ``context``.

        ``allowed`` (batch, q, context+q) says which keys each query may attend to. Returns the last
        hidden states (batch, q, width) and the new positions' keys/values per layer.
        """
        n_layers = self.model.config.num_hidden_layers
        layers = [_ContextLayer(*context[i]) if context else _ContextLayer() for i in range(n_layers)]
        mask = torch.zeros(allowed.shape, dtype=embeds.dtype, device=self.device)
        mask = mask.masked_fill(~allowed.to(self.device), torch.finfo(embeds.dtype).min)[:, None]
        self.calls += 1
        out = self.model(inputs_embeds=embeds.to(self.device, self.dtype), position_ids=positions.to(self.device),
                         attention_mask=mask, use_cache=False, **with_cache(self.model, Cache(layers=layers)))
        return out.last_hidden_state, [layer.added for layer in layers]


def check_encoder(name_or_path: str | Path | None, dtype: str = "float32"):
    """Fail fast on an unusable encoder or dtype; reads only the model's config. Returns the config."""
    from transformers import AutoConfig

    name = str(name_or_path or default_encoder_path())
    if dtype not in DTYPES:
        raise InputError("encoder_dtype", f"{dtype!r} is not allowed; allowed: {', '.join(DTYPES)}")
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise InputError("encoder", f"cannot load {name!r}: {' '.join(str(exc).split())[:300]}") from None
    if config.is_encoder_decoder:
        raise InputError("encoder", f"{name!r} is an encoder-decoder model; use an encoder or a causal LM")
    return config


def _special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """Split the tokenizer's added special tokens into those before and after the text."""
    plain = tokenizer("lmtune", add_special_tokens=False)["input_ids"]
    full = tokenizer("lmtune", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start], full[start + len(plain):]
    return [], []


def _folder_fingerprint(name: str) -> list[tuple[str, int, int]] | None:
    """Names, sizes and mtimes of a local model folder's files: a model changed in place gets new cache keys."""
    path = Path(name)
    if not path.is_dir():
        return None
    return sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in path.iterdir() if f.is_file())
