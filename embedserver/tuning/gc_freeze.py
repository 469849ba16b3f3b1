"""Python's cyclic garbage collector in a long-running server.

Every few hundred allocations the collector scans young objects, and now and then all of them: the modules,
FastAPI's routes, pydantic's schemas and a loaded model's Python objects, about 120,000 objects that never
become garbage. Under load each of those full scans holds the GIL for tens of milliseconds, stalling the
event loop and the MLX thread's way back from a forward pass, which leaves the GPU idle meanwhile (docs/perf/log.md).
Freezing what is alive once start-up
is done moves it out of every later scan, as Instagram's Django servers do; the collector still runs for the
objects requests create.

It also runs less often than Python's default (a young collection every 700 objects allocated and not yet
freed): under load the hundreds of requests in flight, a few dozen objects each living tens of milliseconds,
survived the young collections into the older generations and set off full collections over all of them,
pauses of up to 28 ms (32-76 ms of every second in the engine on an H200, docs/perf/log.md). Most request
objects die by reference counting before a collection at the larger threshold would see them; garbage cycles
are still collected automatically, later.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)

# The collector's thresholds once start-up is done: objects allocated and not freed before a young collection,
# and young (then middle) collections before the next older one.
THRESHOLDS = (50_000, 20, 20)


def freeze_long_lived() -> None:
    """Collect once, then move every object alive now to the collector's permanent generation, and set the
    serving thresholds. Call when start-up (or a model load) has finished; objects created later are collected
    automatically, at THRESHOLDS."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    log.debug("froze %d objects in %.0f ms", gc.get_freeze_count(), (time.perf_counter() - started) * 1000)


def collect_everything() -> None:
    """A full collection that also reaches frozen objects (an evicted model's runner is one: it refers to
    itself through its compiled forward pass, so only the collector frees it, and its GPU memory with it);
    what is still alive afterwards is frozen again."""
    gc.unfreeze()
    freeze_long_lived()
