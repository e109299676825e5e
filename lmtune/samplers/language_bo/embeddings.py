"""Frozen language-model embeddings of a fixed pool of texts, with an optional learnable soft token ψ.

Language-aided BO ("Efficient Hyper-parameter Search for LoRA via Language-aided Bayesian Optimization")
embeds every candidate config's text with a frozen LM plus one appended learnable token ψ and reads the
embedding at ψ's position. Re-embedding a whole pool (tens of thousands of texts for lora-paper) at every
iteration is what made the prior system slow; this module makes it cheap (docs/benchmarks.md measures it).

Block structure. Each text is split into a *shared prefix* (identical for every config, e.g. the explanation
paragraphs of the domain template) and a config-specific *suffix* (the value lines). The model runs with a
block-causal attention mask: the prefix attends to itself, the suffix to the prefix and to itself, ψ to
everything; nothing attends to ψ. Hence:

* the prefix's keys/values are computed once (one forward pass for the whole pool);
* the ψ-free suffix states do not depend on ψ, so they are computed once per config and, pooled,
  cached on disk (the one-time pass);
* a new ψ needs one position per config: the ψ query attends to the stored prefix+suffix
  keys/values (packed into one sequence), so an MLL step over ψ does not run the texts again.

For a causal LM this mask *is* the model's own causal mask, so all of the above is exact. For a bidirectional
encoder (MiniLM, the offline default) it is a modelling choice: ψ acts as a read-out token, exactly as it does
in the paper's causal LM (ψ is last and nothing before it can see it), and the explanation is a shared context
that the values read but that does not read the values. ``share_prefix=False`` drops the second choice (each
text is encoded whole, bidirectionally), at a one-time pass many times as long for the domain template.

Pooling: causal LMs use the last position (the paper's last-token pooling: the last suffix token
without ψ, ψ itself with ψ); encoders use the mean over the suffix positions (plus ψ with ψ).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmtune.errors import InputError
from lmtune.files import write_atomic
from lmtune.samplers.language_bo.encoder import KV, FrozenEncoder

log = logging.getLogger(__name__)

#: Bumped whenever the embedding computation changes, so old cache files are not reused.
FORMAT_VERSION = 1


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where pool embeddings are cached: ``cache_dir``, else ``$LMTUNE_CACHE_DIR/embeddings``,
    else ``~/.cache/lmtune/embeddings``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = os.environ.get("LMTUNE_CACHE_DIR")
    return (Path(root) if root else Path("~/.cache/lmtune")).expanduser() / "embeddings"


# -- a pool of texts -----------------------------------------------------------------------------


def shared_prefix(texts: Sequence[str]) -> str:
    """The longest common prefix of ``texts`` that ends at a line break ('' if none).

    Cutting at a line break keeps the tokenization of prefix + suffix the same as that of the whole
    text for common tokenizers.
    """
    if len(texts) < 2:
        return ""
    common = os.path.commonprefix(list(texts))
    cut = common.rfind("\n")
    return common[: cut + 1] if cut >= 0 else ""


@dataclass
class _Suffix:
    """What is kept of one config to re-embed it with any ψ: its suffix keys/values and ψ-free embedding."""

    kv: KV  # per layer (keys, values), each (heads, length, head_dim)
    length: int
    pooled: torch.Tensor  # ψ-free embedding (width,), float32


class TextPool:
    """Texts of a candidate pool embedded by a frozen encoder.

    ``psi_free()`` gives the ψ-free embedding of every text (cached on disk); ``psi_batch(indices)``
    gives a function ψ -> embeddings of those texts with ψ appended, differentiable in ψ, on ``device``: the
    encoder's CUDA device (the GP and pool ranking then run there too), else the CPU.
    """

    def __init__(self, encoder: FrozenEncoder, texts: Sequence[str], *, share_prefix: bool = True,
                 batch_size: int = 64):
        self.encoder = encoder
        self.device = encoder.device if encoder.device.type == "cuda" else torch.device("cpu")
        self.texts = list(texts)
        self.batch_size = batch_size
        self.share_prefix = share_prefix
        leading, trailing = encoder.special_ids()
        prefix_text = shared_prefix(self.texts) if share_prefix else ""
        self.prefix_text = prefix_text
        self._prefix_ids = leading + encoder.token_ids(prefix_text) if share_prefix else []
        self._suffix_lead = [] if share_prefix else leading
        self._trailing = trailing
        self._prefix_kv: KV | None = None
        self._states: dict[int, _Suffix] = {}
        self._check_length()

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def prefix_length(self) -> int:
        return len(self._prefix_ids)

    def _suffix_ids(self, indices: Sequence[int]) -> list[list[int]]:
        suffixes = [self.texts[i][len(self.prefix_text):] for i in indices]
        tokens = self.encoder.tokenizer(suffixes, add_special_tokens=False)["input_ids"] if suffixes else []
        return [self._suffix_lead + x + self._trailing for x in tokens]

    def _check_length(self) -> None:
        limit = self.encoder.max_positions
        longest = max(self.texts, key=len)
        need = self.prefix_length + len(self._suffix_ids([self.texts.index(longest)])[0]) + 1
        if limit is not None and need > limit:
            raise InputError("template", f"texts need {need} positions (with ψ) but {self.encoder.name} has "
                             f"{limit}; shorten the template")

    # -- cache key ------------------------------------------------------------------------------
    def cache_key(self) -> str:
        """Hash of everything the ψ-free embeddings depend on: model, dtype, texts, block split."""
        digest = hashlib.sha256()
        header = {"format": FORMAT_VERSION, "encoder": self.encoder.identity, "causal": self.encoder.causal,
                  "share_prefix": self.share_prefix, "prefix": self.prefix_text}
        digest.update(json.dumps(header, sort_keys=True).encode())
        for text in self.texts:
            digest.update(b"\x00" + text.encode())
        return digest.hexdigest()[:32]

    # -- ψ-free embeddings of the whole pool ----------------------------------------------------
    def psi_free(self, cache_dir: str | Path | None = None) -> torch.Tensor:
        """ψ-free embeddings of every text, (len, width) float32; loaded from disk when cached."""
        path = cache_root(cache_dir) / f"{self.cache_key()}.npy"
        if path.is_file():
            try:
                cached = np.load(path)
            except (OSError, ValueError):
                cached = None
            if cached is not None and cached.shape == (len(self), self.encoder.hidden_size):
                return torch.from_numpy(cached)
        log.info("embedding %d texts with %s (one-time, cached in %s)", len(self), self.encoder.name, path.parent)
        out = self.embed(range(len(self)))
        _save_atomic(path, out.numpy())
        return out

    def embed(self, indices: Sequence[int]) -> torch.Tensor:
        """ψ-free embeddings of these texts, computed now (float32, no cache)."""
        indices = list(indices)
        ids = self._suffix_ids(indices)
        order = np.argsort([len(x) for x in ids], kind="stable")  # similar lengths share a batch: little padding
        out = torch.empty(len(indices), self.encoder.hidden_size)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size].tolist()
            out[rows] = self._encode([indices[r] for r in rows], [ids[r] for r in rows], keep=False)
        return out

    # -- ψ embeddings of a few texts -----------------------------------------------------------
    def psi_batch(self, indices: Sequence[int]):
        """A function ψ -> (len(indices), width) embeddings of these texts with ψ appended.

        Runs the (ψ-free) suffixes of texts not seen before once; each call then runs only the ψ
        positions, packed into one sequence that attends to the shared prefix and its own suffix.
        """
        missing = [i for i in dict.fromkeys(indices) if i not in self._states]
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start:start + self.batch_size]
            self._encode(batch, self._suffix_ids(batch), keep=True)
        return _PsiBatch(self, [self._states[i] for i in indices])

    def forget(self, keep: set[int]) -> None:
        """Drop stored suffix states except ``keep`` (bounded memory for shortlisted candidates)."""
        for index in [i for i in self._states if i not in keep]:
            del self._states[index]

    # -- internals ------------------------------------------------------------------------------
    def _prefix(self) -> KV | None:
        if self._prefix_kv is None and self._prefix_ids:
            n = len(self._prefix_ids)
            ids = torch.tensor([self._prefix_ids])
            allowed = torch.ones(1, n, n, dtype=torch.bool)
            if self.encoder.causal:
                allowed = allowed.tril()
            with torch.no_grad():  # not inference_mode: these tensors take part in ψ's autograd graph
                _, kv = self.encoder.forward_block(self.encoder.embed_ids(ids), torch.arange(n)[None], allowed, None)
            self._prefix_kv = [(k.clone(), v.clone()) for k, v in kv]
        return self._prefix_kv

    def _encode(self, batch: list[int], ids: list[list[int]], *, keep: bool) -> torch.Tensor:
        """Run the suffixes (token ``ids``) of ``batch`` after the prefix; return their ψ-free embeddings
        (float32), and keep their keys/values if ``keep``."""
        lengths = torch.tensor([len(x) for x in ids])
        width, p = int(lengths.max()), self.prefix_length
        pad = self.encoder.tokenizer.pad_token_id or 0
        tokens = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
        valid = torch.arange(width)[None] < lengths[:, None]
        allowed = valid[:, None, :].expand(-1, width, -1).clone()
        if self.encoder.causal:
            allowed &= torch.ones(width, width, dtype=torch.bool).tril()
        allowed |= torch.eye(width, dtype=torch.bool)  # padding rows see themselves: no empty softmax
        allowed = torch.cat([torch.ones(len(batch), width, p, dtype=torch.bool), allowed], dim=-1)
        prefix = self._prefix()
        context = [(k.expand(len(batch), -1, -1, -1), v.expand(len(batch), -1, -1, -1)) for k, v in prefix] \
            if prefix else None
        with torch.no_grad():
            hidden, kv = self.encoder.forward_block(self.encoder.embed_ids(tokens), p + torch.arange(width)[None]
                                                    .expand(len(batch), -1), allowed, context)
            hidden = hidden.float().cpu()  # pooled embeddings live on the CPU, next to the GP
            if self.encoder.causal:
                pooled = hidden[torch.arange(len(batch)), lengths - 1]
            else:
                pooled = (hidden * valid[..., None]).sum(1) / lengths[:, None]
        if keep:
            for row, index in enumerate(batch):
                n = int(lengths[row])
                self._states[index] = _Suffix([(k[row, :, :n].clone(), v[row, :, :n].clone()) for k, v in kv],
                                              n, pooled[row].clone())
        return pooled


class _PsiBatch:
    """Embeddings of a fixed set of texts as a function of ψ (see ``TextPool.psi_batch``)."""

    def __init__(self, pool: TextPool, states: list[_Suffix]):
        self.pool = pool
        encoder = pool.encoder
        p = pool.prefix_length
        lengths = [s.length for s in states]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int) + p
        total, m = p + sum(lengths), len(states)
        prefix = pool._prefix()
        self.context = []
        for layer in range(encoder.model.config.num_hidden_layers):
            parts = ([prefix[layer]] if prefix else []) + [(s.kv[layer][0][None], s.kv[layer][1][None]) for s in states]
            self.context.append((torch.cat([k for k, _ in parts], dim=2), torch.cat([v for _, v in parts], dim=2)))
        allowed = torch.zeros(1, m, total + m, dtype=torch.bool)
        allowed[0, :, :p] = True
        for row, (start, length) in enumerate(zip(starts, lengths, strict=True)):
            allowed[0, row, start:start + length] = True
            allowed[0, row, total + row] = True
        self.allowed = allowed.to(encoder.device)  # moved once, not at every MLL step
        self.positions = torch.tensor([[p + n for n in lengths]]).to(encoder.device)
        self.lengths = torch.tensor(lengths, dtype=torch.float32)[:, None].to(pool.device)
        self.pooled = torch.stack([s.pooled for s in states]).to(pool.device)

    def __call__(self, psi: torch.Tensor) -> torch.Tensor:
        encoder = self.pool.encoder
        embeds = psi.to(encoder.dtype)[None, None].expand(1, len(self.lengths), -1)
        hidden, _ = encoder.forward_block(embeds, self.positions, self.allowed, self.context)
        state = hidden[0].float().to(self.pool.device)
        if encoder.causal:
            return state
        return (self.pooled * self.lengths + state) / (self.lengths + 1)


def _save_atomic(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_atomic(path, buffer.getvalue())
