"""glibc's malloc, told to keep the memory a pod frees for its next batch.

A finished job's answer is megabytes, and a poll makes a few copies of it on the way in
(the body read, decoded, parsed), each a block of its own. glibc maps a block that
large on its own and gives it back to the kernel when it is freed, so the next answer
faults every page in again: measured in a pod, that cost as much CPU as parsing the
answer. With the thresholds raised, freed blocks stay in the heap for the next answer,
up to TRIM_BYTES of free memory held.

MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ in the environment (glibc's own
settings) take precedence; on another libc this does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform

MMAP_BYTES = 32 * 1024**2  # the largest threshold glibc takes on a 64-bit machine
TRIM_BYTES = 64 * 1024**2
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters, from <malloc.h>


def keep_freed() -> bool:
    """Raise glibc's thresholds for this process; whether they were set."""
    if platform.libc_ver()[0] != "glibc" or any(
            name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES))
