"""The daemons' garbage-collector setting: what start-up built is kept out of later collections.

A full (generation 2) collection walks every tracked object. In the funclet, with its libraries
and a pool of sandboxes loaded, one took 30 ms, and the cold start that met it waited for it: the
single 30-110 ms outliers among the benchmark's cold starts. Objects that live as long as the process
need no collecting, so once a daemon is up they move to the collector's permanent generation, and a
full collection walks only what was made since (the zygote does the same before it forks sandboxes,
for the pages they share with it).
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect once, then freeze every object alive; returns how many were frozen.

    What start-up freed (import machinery, parsed configuration, the garbage just collected) then
    goes back to the kernel: glibc keeps freed memory in its heap for reuse, and of a daemon that
    is idle most of its life that is resident memory for nothing (2.6 MiB of the all-in-one
    process's 46 at start-up).
    """
    gc.collect()
    gc.freeze()
    release_free_memory()
    return gc.get_freeze_count()


def release_free_memory() -> bool:
    """Return the C heap's free pages to the kernel (glibc's ``malloc_trim``); False where there is
    no such call (another C library)."""
    try:
        import ctypes

        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):
        return False
