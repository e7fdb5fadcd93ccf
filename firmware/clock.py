"""How far the kit's clock can be trusted (no RTC: the time may be wrong until NTP syncs)."""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

# a time stamped further ahead than this (by a kit, in a report or a self-test) comes from a clock that was
# wrong: how old it is cannot be known (fleet readiness, the boot readiness's last self-test)
FUTURE_TOLERANCE_S = 3600.0

# struct timex from <sys/timex.h> (Linux, 64-bit and 32-bit longs alike via c_long)
_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


class _Timex(ctypes.Structure):
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                ("time_sec", ctypes.c_long), ("time_usec", ctypes.c_long), ("tick", ctypes.c_long),
                ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long), ("shift", ctypes.c_int),
                ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
                ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
                ("_pad", ctypes.c_int * 11)]


def time_source() -> str:
    """'ntp' if the kernel says the clock is synchronised (adjtimex), else 'unsynced'; 'unknown' if
    that cannot be asked. Stored with every capture: an 'unsynced' timestamp may be far off."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))  # modes=0: read only, no privilege needed
    except (OSError, AttributeError):
        return "unknown"
    if state < 0:
        return "unknown"
    if state == _TIME_ERROR or tx.status & _STA_UNSYNC:
        return "unsynced"
    return "ntp"


def boot_id() -> str:
    """This boot's id: monotonic clock values are comparable only within one boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"
