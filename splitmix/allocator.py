"""Keep freed memory in the process (glibc) so that repeated large tensors do not fault in pages.

Training, evaluation and PGD allocate and free the same large buffers (activations, gradients,
optimizer temporaries) thousands of times. glibc serves large sizes with fresh ``mmap`` calls and
returns them on free, so every step pays the kernel to map and zero them again. Evaluation spent
~15% of its wall time there; a full-width Digits training step, whose 6272x2048 classifier weight
makes every gradient and SGD temporary a 51 MB block, spent a third of its wall time (9.3 s of
system time against 18 s of user time over two rounds; 0.8 s with this module's settings).
Raising the mmap threshold to its ceiling (32 MiB on 64-bit) and disabling mmap for larger blocks
serves every size from the heap, and a high trim threshold keeps freed blocks there for reuse.
The price is that a process keeps its peak heap until it exits, which suits one-run processes.
Elsewhere (other C libraries) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
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
    # blocks above the threshold's ceiling would still be mmap-ed: serve none with mmap
    ok = mallopt(M_MMAP_MAX, 0) == 1 and ok
    return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
