"""The collector once start-up is done (embedserver/tuning/gc_freeze.py): what was alive is frozen out of later
scans, young collections come at the serving threshold, and garbage cycles made afterwards are still freed
without anyone calling the collector."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from embedserver.tuning.gc_freeze import THRESHOLDS, freeze_long_lived


@pytest.fixture
def collector_restored() -> Iterator[None]:
    thresholds, enabled = gc.get_threshold(), gc.isenabled()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        if not enabled:
            gc.disable()


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_a_cycle_made_after_the_freeze_is_freed_at_the_serving_threshold(collector_restored: None) -> None:
    gc.enable()
    freeze_long_lived()
    assert gc.get_threshold() == THRESHOLDS
    assert gc.get_freeze_count() > 0
    cycle = _Node()
    freed = weakref.ref(cycle)
    del cycle
    # Fewer new objects than the young threshold: no collection has run, the cycle is still there.
    kept: list[list[int]] = [[] for _ in range(THRESHOLDS[0] // 2)]
    assert freed() is not None
    # Past the threshold, a young collection runs by itself and frees it (the freeze left the young generation
    # empty, so the cycle is in it).
    kept += [[] for _ in range(THRESHOLDS[0])]
    assert freed() is None
    assert len(kept) > THRESHOLDS[0]
