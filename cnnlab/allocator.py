"""Keep freed memory in the process, so a training step stops paying the kernel for pages.

glibc's malloc serves a large request with a fresh `mmap` and hands it back with `munmap`
when it is freed; it also trims the heap's top once enough of it is free. Its threshold
adapts, but only up to 32 MB. A training or evaluation step allocates and frees the same
activation sizes every step, so every step the kernel maps those pages again and zeroes
them, one page fault per 4 KB. Measured on the project's 2-core EPYC (bf16):

- seed 002's CNN at 224 px (`inat_scratch`, batch 64) trains at 143 images/s instead of
  66; a four-block one at batch 32 takes 412 ms a step instead of 672 ms (2,500 page
  faults a step instead of 212,000);
- Fashion-MNIST's test with ten views per image takes 5.5 s instead of 10.6 s, and its
  validation 0.15 s instead of 0.33 s (batches of 1000 make 50 MB maps).

The price: the process keeps what it freed until it exits, as PyTorch's caching allocator
does on a GPU, and freed blocks of many sizes fragment the heap: `inat_scratch`'s peak
resident size went from about 3 GB to about 5 GB, `fashion_fast`'s stayed at 1 GB. Set
`CNNLAB_KEEP_FREED=0` to keep glibc's own policy. On other C libraries nothing changes.
"""

from __future__ import annotations

import ctypes
import functools
import os

# <malloc.h>: mallopt parameters
M_TRIM_THRESHOLD = -1  # free bytes at the heap's top before it is given back
M_MMAP_MAX = -4  # how many blocks may be served by mmap at once; 0: none, all from the heap
NEVER_TRIM = 2**31 - 1  # mallopt takes a C int


def glibc() -> ctypes.CDLL | None:
    """The GNU C library this process runs on, or None on any other (musl, macOS, Windows),
    which keeps its own policy."""
    try:
        libc = ctypes.CDLL(None)  # the C library already loaded into this process
    except (OSError, TypeError):  # Windows names no process library
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None


@functools.cache
def keep_freed_memory() -> bool:
    """Serve every block from the heap and never trim it (glibc only). Process-wide, so
    set once however many commands or Trainers ask; True when the policy is in effect."""
    libc = glibc()
    if libc is None or os.environ.get("CNNLAB_KEEP_FREED", "1") == "0":
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
