"""What a batch worker queues: a request's texts as `WorkItem`s, grouped by their `QueuedRequest`, whose one
future resolves to every vector of the request, stacked in order, once the last of its texts is computed (one
future and one callback per request, not per text: the engine process's work per request is what bounds
short-text throughput)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence

import numpy as np

from embedserver.tokenization.token_ids import TokenIds


class WorkItem:
    """One text of a queued request: its token ids and its row in the request's answer."""

    __slots__ = ("ids", "request", "row")

    def __init__(self, ids: TokenIds, request: QueuedRequest, row: int) -> None:
        self.ids = ids
        self.request = request
        self.row = row


class QueuedRequest:
    """One request in a worker: its texts still waiting, in order, and the future of its answer (the vectors
    of every text, stacked in order). A done future (answered, failed, or cancelled by a caller that left)
    means its texts still waiting are dropped, not computed."""

    __slots__ = (
        "enqueued",
        "future",
        "out",
        "passes",
        "progressed",
        "queued",
        "remaining",
        "size",
        "waiting",
    )

    def __init__(self, sequences: Sequence[TokenIds], future: asyncio.Future[np.ndarray]) -> None:
        self.waiting = deque([WorkItem(ids, self, row) for row, ids in enumerate(sequences)])
        self.future = future
        self.size = self.remaining = len(self.waiting)
        self.out: np.ndarray | None = None  # the answer being filled, rows in request order
        self.enqueued = time.perf_counter()
        self.progressed = 0.0  # when the last of its texts was computed (0: none yet)
        self.passes = 0  # its texts in batches cut and not yet done with (the worker counts them)
        self.queued = False  # in the worker's round-robin queue now

    def deliver(self, row: int, vector: np.ndarray) -> None:
        """One text's vector; the answer once every text has one."""
        if self.size == 1:
            self.future.set_result(vector[None, :].copy())
            return
        out = self.out
        if out is None:
            out = self.out = np.empty((self.size, vector.shape[0]), dtype=vector.dtype)
        out[row] = vector
        self.remaining -= 1
        if not self.remaining:
            self.future.set_result(out)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


def waiting_since(request: QueuedRequest) -> float:
    """When a request last started waiting for the model: queued, or its last text computed."""
    return max(request.enqueued, request.progressed)


def turn_order(batch: list[WorkItem]) -> tuple[bool, float]:
    """Which of several batches planned at once runs first (the least): one holding a request with no text in
    a pass, then the one holding the request that has waited longest. A request with a text in a pass
    progresses; one whose texts all wait does not. So a query that arrives while a bulk request's pass runs
    goes next, not after that request's next pass as well (its last text computed before the query came, it
    had waited longer). The test for a request with no text in a pass stops at the first (most batches'
    first text); one such key per batch a cut is all this adds to a request's cost."""
    waiting = any(not item.request.passes for item in batch)
    return not waiting, min(waiting_since(item.request) for item in batch)


def deliver_pass(batch: list[WorkItem], vectors: np.ndarray, now: float) -> None:
    """A pass's vectors to their requests, skipping those whose caller left or that failed meanwhile."""
    for item, vector in zip(batch, vectors, strict=True):
        request = item.request
        request.progressed = now
        if not request.future.done():
            request.deliver(item.row, vector)
