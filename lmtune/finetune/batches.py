"""Host-side batch preparation for the training loop: length-grouped batches, scored positions, async copies.

Everything here runs on the CPU before a step is queued on the device, so the device never waits for it, and
nothing here reads a value back from the device.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from lmtune.finetune.encode import IGNORE_INDEX, CausalExample

#: Batches per group that is sorted by length (``transformers``' ``LengthGroupedSampler`` uses 50 too).
MEGABATCH = 50
#: The narrowest width a bucketed batch is padded to.
MIN_BUCKET = 16


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Copy a host tensor to ``device``. To CUDA it goes through pinned memory without blocking: a copy from
    ordinary (pageable) memory makes the host wait until the device has finished all queued work."""
    device = torch.device(device)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def example_length(example) -> int:
    """Tokens of an encoded example: (text ids, label) or a ``CausalExample`` (its ids come first too)."""
    return len(example[0])


def pad_sequences(sequences: list[list[int]], value: int, device, left: bool = False, bucket: int = 0):
    """(ids, attention mask) padded to the longest sequence (dynamic padding; bucketed as ``bucket_width``);
    left-padded for generation."""
    width = bucket_width(max(len(seq) for seq in sequences), bucket)
    ids = torch.full((len(sequences), width), value, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return to_device(ids, device), to_device(mask, device)


def shuffled_batches(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless index batches, reshuffled (seeded) at every epoch."""
    rng = random.Random(seed)
    while True:
        order = list(range(n))
        rng.shuffle(order)
        for start in range(0, n, batch_size):
            yield order[start:start + batch_size]


def grouped_batches(lengths: list[int], batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless batches of indices of similar length, reshuffled (seeded) at every epoch.

    As ``transformers``' ``group_by_length``: each epoch's seeded permutation is cut into groups of ``MEGABATCH``
    batches, each group is sorted by length and cut into batches, so a batch pads to little more than its own
    examples. The batches of an epoch are then shuffled, except that the one holding the longest example comes
    first: a config that does not fit in memory fails at its first step. An epoch has ``ceil(n / batch_size)``
    batches, as without grouping.
    """
    rng = random.Random(seed)
    span = MEGABATCH * batch_size
    while True:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), span):
            group = sorted(order[start:start + span], key=lambda i: -lengths[i])  # stable: ties keep their order
            batches += [group[k:k + batch_size] for k in range(0, len(group), batch_size)]
        rng.shuffle(batches)
        longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
        batches.insert(0, batches.pop(longest))
        yield from batches


@dataclass
class CausalBatch:
    """Host tensors of one causal batch, right-padded: ``labels`` as transformers' (unshifted), an attention mask for
    unpacked rows, position ids (restarting at each example) for packed ones; ``padded`` says whether any row is
    shorter than the widest."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    padded: bool


def causal_batch(examples: list[CausalExample], pad_id: int, packing: str | None = None, capacity: int = 0,
                 bucket: int = 0) -> CausalBatch:
    """``examples`` as one batch: one row each (``packing`` None), several per row of at most ``capacity`` tokens
    (``"rows"``: best-fit decreasing, for attention that takes a mask), or all in one row (``"flat"``: transformers'
    ``DataCollatorWithFlattening``, for flash attention's variable-length kernels). Packed rows carry no mask:
    transformers tells the examples apart by their position ids (a block-diagonal mask for eager and SDPA
    attention), and each example's first label is ignored, so no example is scored on the one before it. With a
    ``bucket`` (the longest width), rows are padded to a bucketed width (``bucket_width``)."""
    if packing == "flat":
        from transformers import DataCollatorWithFlattening

        flat = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)(
            [{"input_ids": x.ids, "labels": x.labels} for x in examples], return_tensors="pt")
        return CausalBatch(flat["input_ids"], flat["labels"], None, flat["position_ids"], False)
    if packing == "rows":
        rows = [_packed_row([examples[i] for i in group]) for group in best_fit([len(x.ids) for x in examples],
                                                                              capacity)]
        ids, labels, positions = zip(*rows, strict=True)
        width = bucket_width(max(map(len, ids)), bucket)
        padding = [list(range(width - len(row))) for row in ids]  # a segment of its own
        return CausalBatch(_padded(ids, pad_id, width), _padded(labels, IGNORE_INDEX, width),
                           None, _padded([p + pad for p, pad in zip(positions, padding, strict=True)], 0, width),
                           any(padding))
    ids, labels = [x.ids for x in examples], [x.labels for x in examples]
    width = bucket_width(max(map(len, ids)), bucket)
    mask = _padded([[1] * len(row) for row in ids], 0, width)
    return CausalBatch(_padded(ids, pad_id, width), _padded(labels, IGNORE_INDEX, width), mask, None,
                       any(len(row) < width for row in ids))


def bucket_width(width: int, bucket: int) -> int:
    """The width a batch of ``width`` tokens is padded to: itself without a ``bucket``; else the next power of two
    (at least ``MIN_BUCKET``), or ``bucket`` where that is narrower, so a compiled run meets a handful of shapes."""
    if not bucket:
        return width
    rounded = MIN_BUCKET
    while rounded < width:
        rounded *= 2
    return max(width, min(rounded, bucket))


def best_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices grouped into rows of at most ``capacity`` tokens, longest first, each into the fullest row it fits
    (best-fit decreasing; an example longer than ``capacity`` has a row of its own)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        fits = [r for r in range(len(rows)) if room[r] >= lengths[i]]
        if fits:
            best = min(fits, key=lambda r: room[r])
            rows[best].append(i)
            room[best] -= lengths[i]
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def _packed_row(examples: list[CausalExample]) -> tuple[list[int], list[int], list[int]]:
    ids, labels, positions = [], [], []
    for x in examples:
        ids += x.ids
        labels += [IGNORE_INDEX] + x.labels[1:]
        positions += range(len(x.ids))
    return ids, labels, positions


def _padded(rows, value: int, width: int) -> torch.Tensor:
    return torch.tensor([list(row) + [value] * (width - len(row)) for row in rows], dtype=torch.long)


def scored_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a (rows, width) host tensor of labels: the positions whose next-token logits score some row's label
    (sorted), and the (rows, positions) targets there (``IGNORE_INDEX`` where a row has none)."""
    following = labels[:, 1:].numpy()  # numpy: host arithmetic that is never mistaken for a wait on the device
    positions = np.flatnonzero((following != IGNORE_INDEX).any(0))
    return torch.from_numpy(positions), torch.from_numpy(following[:, positions])


def micro_batches(examples: list, cap: int | None) -> list[list]:
    """A batch cut into ``ceil(len / cap)`` near-equal parts of at most ``cap`` examples (one part without a cap):
    their summed gradients are the batch's."""
    if cap is None or len(examples) <= cap:
        return [examples]
    parts = -(-len(examples) // cap)
    size, extra = divmod(len(examples), parts)
    bounds = [k * size + min(k, extra) for k in range(parts + 1)]
    return [examples[bounds[k]:bounds[k + 1]] for k in range(parts)]
