"""`pm.heap.trim_heap`: hands freed heap pages back to the OS after a rebuild (glibc)."""

from __future__ import annotations

import platform

import pytest

from pm.heap import trim_heap


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trim_heap_returns_freed_pages_to_the_os() -> None:
    # Interleave survivors with garbage so glibc cannot shrink the heap top by itself.
    blocks = [bytearray(2048) for _ in range(100_000)]  # ~200 MiB of malloc'd (not pymalloc) blocks
    survivors = blocks[::50]
    del blocks
    before = _rss_kib()
    assert trim_heap() is True
    after = _rss_kib()
    assert after < before - 50 * 1024, (before, after)  # well over 50 MiB came back
    assert len(survivors) == 2000
