"""Keep the daemon's memory flat on a 512 MB Pi Zero 2 W.

Every press decodes a ~20-36 MB photo and the reader makes a few large temporaries. With glibc's default
(dynamic) mmap threshold, freed blocks of that size are kept in the heap and fragment it across threads'
arenas, so RSS creeps up by tens of MB; with a fixed threshold large arrays are mmapped and given back to
the system when freed. Measured with scripts/bench_soak.py (see README).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

_libc = None


def _lib():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.mallopt  # noqa: B018 - glibc only
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def tune_malloc(*, mmap_threshold: int = 1 << 20, arena_max: int = 2, trim_threshold: int = 4 << 20) -> bool:
    """Fixed mmap threshold, few arenas, eager trimming. Call once, early. False if not glibc."""
    libc = _lib()
    if libc is None:
        return False
    ok = all(libc.mallopt(opt, val) == 1 for opt, val in ((M_MMAP_THRESHOLD, mmap_threshold),
                                                           (M_ARENA_MAX, arena_max),
                                                           (M_TRIM_THRESHOLD, trim_threshold)))
    if not ok:
        log.warning("mallopt refused a setting; memory use may grow")
    return ok


def trim() -> None:
    """Give freed heap memory back to the system (after each press)."""
    libc = _lib()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
