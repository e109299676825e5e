"""The summed loss of one batch: a classifier's cross-entropy, or a causal LM's over the tokens that carry the loss.

Nothing here reads a value back from the device. A causal batch is one example per row or several per row
(``LossOptions.packing``, ``batches.causal_batch``); its cross-entropy is computed one of three ways:

* ``plain``: the model's logits (at the scored positions only when ``keep_logits``: a 150k vocabulary's output
  head is much of a small model's work, its float32 logits most of a step's memory), then ``F.cross_entropy``;
* ``chunked``: the decoder's hidden states at the scored positions, then the output head and the cross-entropy over
  chunks of ``CHUNK_TOKENS`` positions, each recomputed in the backward pass instead of kept, so no more than one
  chunk's logits exist at a time (memory, not speed);
* ``liger``: Liger-Kernel's fused linear cross-entropy ("Liger Kernel: Efficient Triton Kernels for LLM Training",
  Hsu et al., arXiv:2410.10989), which never materializes the logits; CUDA and the ``liger-kernel`` package only.

Chunked and Liger apply the output head themselves, so they are refused for a model whose logits are more than its
head's output (soft-capped or scaled logits) or whose head carries an adapter.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lmtune._compat import attention_implementation
from lmtune.errors import InputError
from lmtune.finetune.batches import CausalBatch, causal_batch, pad_sequences, scored_positions, to_device
from lmtune.finetune.device import Precision
from lmtune.finetune.encode import IGNORE_INDEX, CausalExample

CROSS_ENTROPY: tuple[str, ...] = ("plain", "chunked", "liger")
#: Positions whose logits one chunk of the chunked cross-entropy holds.
CHUNK_TOKENS = 1024
#: Config attributes of models whose logits are not just the output head's (Gemma 2's soft cap, Cohere's scale).
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale")


@dataclass(frozen=True)
class LossOptions:
    """How a batch's loss is computed (module docstring); ``capacity`` is a packed row's most tokens,
    ``mask_unpadded`` passes the attention mask also for a batch without padding (the CPU path, as it always did:
    off the CPU transformers would inspect the all-ones mask on the device, a wait per forward pass), and a
    ``bucket`` (the longest width) pads batches to a few widths (``batches.bucket_width``) for compiled layers.
    ``block_mask`` (``bool`` for SDPA, ``additive`` for eager attention) hands a padded or packed batch's attention
    to the model as a ready 4D mask built on the device (``full_attention_mask``), the mask transformers would
    build itself, without the checks of its values with which transformers decides whether a mask is needed: each
    of those is a wait for the device, two per forward pass."""

    pad_id: int
    device: torch.device
    precision: Precision
    keep_logits: bool = False
    packing: str | None = None
    capacity: int = 0
    cross_entropy: str = "plain"
    mask_unpadded: bool = True
    bucket: int = 0
    block_mask: str | None = None


def liger_available(device: torch.device) -> bool:
    """Whether Liger-Kernel's fused cross-entropy can run here: the package (with triton) and a CUDA device."""
    return device.type == "cuda" and importlib.util.find_spec("liger_kernel") is not None


def check_cross_entropy(name: str, model, device: torch.device) -> None:
    """Refuse a cross-entropy that cannot run on ``model`` here, before a run starts."""
    if name not in CROSS_ENTROPY:
        raise InputError("cross_entropy", f"must be one of {', '.join(CROSS_ENTROPY)}, got {name!r}")
    if name == "plain":
        return
    if name == "liger" and not liger_available(device):
        raise InputError("cross_entropy", "liger needs the liger-kernel package (pip install liger-kernel) and a "
                                          f"CUDA device; this run's device is {device}")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    config = base.config.get_text_config()
    if any(getattr(config, name, None) is not None for name in LOGIT_TRANSFORMS) or type(head) is not torch.nn.Linear:
        raise InputError("cross_entropy", f"{name} applies the output head itself, and {type(base).__name__}'s logits "
                                          "are more than its head's output (or its head carries an adapter); use plain")


def block_mask_kind(model, device: torch.device) -> str | None:
    """Which 4D mask ``full_attention_mask`` hands ``model`` (``LossOptions.block_mask``), or None to let transformers
    build it: on the CPU (where its checks wait for nothing), and for attention that is not full causal attention
    in every layer (sliding windows, chunks, layer types), whose masks transformers alone knows."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.get_text_config()
    sliding = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if device.type == "cpu" or sliding or layer_types != {"full_attention"} or getattr(
            config, "attention_chunk_size", None):
        return None
    return {"sdpa": "bool", "eager": "additive"}.get(attention_implementation(base))


def classification_loss(model, examples: list[tuple[list[int], int]], options: LossOptions):
    """(summed loss, examples, logits) of a classifier's batch."""
    input_ids, mask = pad_sequences([ids for ids, _ in examples], options.pad_id, options.device,
                                    bucket=options.bucket)
    if not options.mask_unpadded and all(len(ids) == input_ids.size(1) for ids, _ in examples):
        mask = None
    labels = to_device(torch.tensor([label for _, label in examples]), options.device)
    with options.precision.context(options.device):
        logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
    return F.cross_entropy(logits, labels, reduction="sum"), len(examples), logits


def causal_loss(model, examples: list[CausalExample], options: LossOptions):
    """(summed loss, scored targets, logits or None) of a causal LM's batch; the targets are counted on the host."""
    batch = causal_batch(examples, options.pad_id, options.packing, options.capacity, options.bucket)
    count = sum(x.targets for x in examples)
    inputs = {"input_ids": to_device(batch.input_ids, options.device)}
    if batch.position_ids is not None:  # without a cache, transformers reads packing from the position ids
        inputs.update(position_ids=to_device(batch.position_ids, options.device), use_cache=False)
    elif batch.padded or options.mask_unpadded:
        inputs["attention_mask"] = to_device(batch.attention_mask, options.device)
    if options.block_mask and (batch.padded or batch.position_ids is not None):
        inputs["attention_mask"] = full_attention_mask(batch, options)
    if options.cross_entropy != "plain":
        return _head_loss(model, inputs, batch.labels, options), count, None
    if options.keep_logits:
        positions, targets = scored_positions(batch.labels)
        with options.precision.context(options.device):
            logits = model(**inputs, logits_to_keep=to_device(positions, options.device)).logits.float()
        targets = to_device(targets, options.device)
    else:
        with options.precision.context(options.device):
            logits = model(**inputs).logits.float()
        targets = to_device(batch.labels, options.device)[:, 1:]
        logits = logits[:, :-1]
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX,
                           reduction="sum")
    return loss, count, logits


def full_attention_mask(batch: CausalBatch, options: LossOptions) -> torch.Tensor:
    """The (rows, 1, width, width) mask of a batch for full (not sliding-window) causal attention, on the device:
    each token sees the tokens up to it in its own example (packed rows; padding forms a segment of its own, so
    no row is all masked) or the real tokens up to it (padded rows), as transformers' masking builds it."""
    width = batch.input_ids.size(1)
    causal = torch.ones(width, width, dtype=torch.bool, device=options.device).tril()
    if batch.position_ids is not None:
        segments = to_device((batch.position_ids == 0).cumsum(1), options.device)
        mask = causal & (segments[:, :, None] == segments[:, None, :])
    else:
        mask = causal & to_device(batch.attention_mask, options.device).bool()[:, None, :]
    mask = mask[:, None]
    if options.block_mask == "additive":  # eager attention adds it to the scores
        dtype = options.precision.base_dtype
        return torch.zeros(mask.shape, dtype=dtype, device=options.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask


def _head_loss(model, inputs: dict, labels: torch.Tensor, options: LossOptions) -> torch.Tensor:
    """The chunked or Liger cross-entropy from the decoder's hidden states at the scored positions."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    positions, targets = scored_positions(labels)
    with options.precision.context(options.device):
        hidden = base.get_decoder()(**inputs).last_hidden_state
    hidden = hidden[:, to_device(positions, options.device)].reshape(-1, hidden.size(-1))
    targets = to_device(targets.reshape(-1), options.device)
    if options.cross_entropy == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        with options.precision.context(options.device):
            return LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")(
                head.weight, hidden, targets)

    def chunk_loss(states: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
        with options.precision.context(options.device):
            logits = head(states).float()
        return F.cross_entropy(logits, wanted, ignore_index=IGNORE_INDEX, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.size(0), CHUNK_TOKENS):
        part = slice(start, start + CHUNK_TOKENS)
        total = total + checkpoint(chunk_loss, hidden[part], targets[part], use_reentrant=False)
    return total
