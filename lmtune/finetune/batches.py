"""Host-side batch preparation for the training loop: length-grouped batches, scored positions, async copies.

Everything here runs on the CPU before a step is queued on the device, so the device never waits for it, and
nothing here reads a value back from the device.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch

IGNORE_INDEX = -100  # label value that cross-entropy skips: prompt and padding tokens
#: Batches per group that is sorted by length (``transformers``' ``LengthGroupedSampler`` uses 50 too).
MEGABATCH = 50


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
    """Tokens of an encoded example: (text ids, label) or (prompt ids, response ids)."""
    first, second = example
    return len(first) + (len(second) if isinstance(second, list) else 0)


def pad_sequences(sequences: list[list[int]], value: int, device, left: bool = False):
    """(ids, attention mask) padded to the longest sequence (dynamic padding); left-padded for generation."""
    width = max(len(seq) for seq in sequences)
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


def response_targets(examples: list[tuple[list[int], list[int]]]) -> tuple[list[int], torch.Tensor]:
    """For right-padded (prompt, response) rows: the positions whose next-token logits score some row's response
    (sorted), and the (rows, positions) targets there (``IGNORE_INDEX`` where a row has none)."""
    positions = sorted({j for p, r in examples for j in range(max(len(p) - 1, 0), len(p) + len(r) - 1)})
    column = {j: k for k, j in enumerate(positions)}
    targets = torch.full((len(examples), len(positions)), IGNORE_INDEX, dtype=torch.long)
    for row, (p, r) in enumerate(examples):
        for offset, token in enumerate(r):
            if len(p) + offset >= 1:  # the first token of a row without prompt is never predicted
                targets[row, column[len(p) + offset - 1]] = token
    return positions, targets
