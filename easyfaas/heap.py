"""The daemons' garbage-collector setting: what start-up built is kept out of later collections.

A full (generation 2) collection walks every tracked object. In the funclet, with pyroute2, aiohttp
and a pool of sandboxes loaded, one took 30 ms, and the cold start that met it waited for it: the
single 30-110 ms outliers among the benchmark's cold starts. Objects that live as long as the process
need no collecting, so once a daemon is up they move to the collector's permanent generation, and a
full collection walks only what was made since (the zygote does the same before it forks sandboxes,
for the pages they share with it).
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect once, then freeze every object alive; returns how many were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
