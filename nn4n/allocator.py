"""Keep freed CPU memory in the process, so each training step reuses the last step's pages."""
from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 256 << 20  # blocks below 256 MiB come from the heap, kept when freed
NEVER_TRIM = 2**31 - 1  # the most an int takes: never hand the heap's free top back


def retain_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse rather than return it to the system.

    Every training step allocates and frees the same (B, T, N) buffers. By default glibc maps large
    blocks (above its dynamic threshold, at most 32 MiB) fresh and unmaps them when freed, or trims the
    heap, so the next step touches new pages: one page fault per 4 KiB, some 1,600 per 6.5 MB buffer and
    51,000 per N=256, batch 256, T=200 iteration (20-25 % of its time on a KVM host). Afterwards blocks
    below 256 MiB come from the heap and are reused when freed. The price is memory: the process keeps
    its peak resident, and reused blocks fragment the heap (that iteration holds 0.25 GiB instead of
    0.16; N=1024, batch 256, T=200 1.2 instead of 0.6). Larger blocks are still mapped afresh, so the
    largest runs keep their footprint (N=1024, batch 256, T=500: 1.5 GiB; 3.4 with its 524 MB buffers
    kept in the heap). Process-wide and not undone. Returns False, changing nothing, where malloc is not
    glibc's (macOS, Windows, musl).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) & bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
