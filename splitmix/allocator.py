"""Keep freed memory in the process (glibc) so that repeated large tensors do not fault in pages.

Evaluation and its PGD attack allocate and free the same activation-sized buffers (tens of MB)
thousands of times. glibc serves such sizes with fresh ``mmap`` calls and returns them on free, so
every pass pays the kernel to map and zero them again: ~15% of an evaluation's wall time was
system time. Raising the mmap threshold to its maximum (32 MiB on 64-bit) and the trim threshold
keeps those blocks on the heap for reuse. Elsewhere (other C libraries) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's ceiling for 64-bit (larger values are refused)
TRIM_THRESHOLD = 1024 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as the module docstring says; True if it took effect."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
