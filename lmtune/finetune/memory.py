"""How much memory a process holds, and giving back what a finished trial freed.

A worker runs trial after trial in one process; whatever one trial leaves allocated, the next starts with, until a
trial runs out of memory. Freed tensors return to torch's allocators, not to the system: CUDA's caching allocator
keeps them until ``torch.cuda.empty_cache``, and glibc keeps freed heap pages of CPU tensors until
``malloc_trim``. Resident memory (RSS) and its peak come from ``/proc/self`` on Linux, where writing 5 to
``clear_refs`` resets the peak, so each trial's own peak can be read (elsewhere they are None).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def trim_heap() -> None:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim``; nothing elsewhere)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def resident_bytes() -> int | None:
    """This process's resident memory now (Linux's VmRSS), or None."""
    return _status_bytes("VmRSS:")


def reset_peak_resident() -> bool:
    """Start a new peak of resident memory (Linux); False where the system cannot."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_resident_bytes() -> int | None:
    """The peak resident memory since the last ``reset_peak_resident`` (Linux's VmHWM), or None."""
    return _status_bytes("VmHWM:")


def _status_bytes(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        return None
    return None
