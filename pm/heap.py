"""Give freed heap memory back to the OS after a burst of allocations (glibc only).

A rebuild decodes and folds every journal entry once: hundreds of MiB of short-lived
objects. Python frees them, but glibc keeps the freed pages in its arenas, so a PM that
rebuilt 2,000,000 entries kept 1.1 GiB RSS while tracemalloc saw under 10 MiB live
(bench/RESULTS.md, memory). `malloc_trim(0)` returns those pages.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache

__all__ = ["trim_heap"]


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "malloc_trim") else None  # musl, macOS: no malloc_trim
    except OSError:
        return None


def trim_heap() -> bool:
    """Return free heap pages to the OS; False where the C library cannot (nothing happens)."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
