"""How much C heap the process holds: for tests that check native memory is freed."""

from __future__ import annotations

import ctypes
import gc


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
    ]


def c_heap_in_use() -> int:
    """Bytes glibc's malloc has handed out (libsrtp's and OpenSSL's allocations included),
    after a garbage collection so that dropped Python owners have let go."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    gc.collect()
    return libc.mallinfo2().uordblks
