"""Giving freed heap memory back to the operating system (glibc ``malloc_trim``).

Large buffers that are freed (a bundle's metadata image, a retired bundle's id map) can stay
resident: glibc raises its mmap threshold after freeing a large mapped block, so the next ones
come from the heap, and a freed block in the middle of the heap is not returned. On a device
that must hold two index bundles at most during a swap, those pages count. A no-op where the C
library has no ``malloc_trim`` (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util

_LIBC: list[ctypes.CDLL | None] = []


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def release_free_heap() -> None:
    """Return free heap pages to the OS (loaded on first use, never at import)."""
    if not _LIBC:
        _LIBC.append(_load_libc())
    libc = _LIBC[0]
    if libc is not None:
        libc.malloc_trim(0)
