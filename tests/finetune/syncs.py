"""Counting the operations that make the host wait for the device: reading a value (``.item()``, ``bool(t)``) or
an output whose size depends on values (``nonzero``). On the CPU they cost nothing, but each is a wait on a GPU,
so counting them on the CPU says where a GPU step would stall."""

from __future__ import annotations

import contextlib
import traceback
from collections import Counter
from collections.abc import Iterator

from torch.utils._python_dispatch import TorchDispatchMode

#: ATen operations that read device values back to the host.
SYNC_OPS = frozenset({"aten._local_scalar_dense.default", "aten.is_nonzero.default", "aten.nonzero.default",
                      "aten.masked_select.default", "aten._unique2.default", "aten.unique_consecutive.default"})


class SyncCounter(TorchDispatchMode):
    """Records each such operation with where in Python it came from."""

    def __init__(self):
        super().__init__()
        self.found: Counter[tuple[str, str]] = Counter()

    @property
    def count(self) -> int:
        return sum(self.found.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in SYNC_OPS:
            frames = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename]
            self.found[(str(func), " <- ".join(f"{f.name}:{f.lineno}" for f in frames[-3:][::-1]))] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_syncs() -> Iterator[SyncCounter]:
    counter = SyncCounter()
    with counter:
        yield counter
