"""A batch worker's waiting requests: the requests whose texts wait for a batch, taken one text from each in
turn, and the bound on how long a request may wait (MAX_QUEUE_WAIT_S).

Batches take texts from the waiting requests in turn (one from each, round and round), so a request of 2,048
texts shares every batch with the small ones that arrive behind it instead of holding the model until it is
done. A request whose caller left is dropped as it comes up; one that waited past the bound without any of
its texts computed fails with 429 queue_timeout, when a cut reaches it or at the next sweep, whichever is
first (a cut waits for the MLX thread, and a long pass on CPU can hold it for minutes). A request that
progresses batch after batch is never cut, however long it takes.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Sequence

from embedserver.batching.limits import BatchLimits
from embedserver.batching.queued import QueuedRequest, WorkItem, waiting_since
from embedserver.errors import Overloaded
from embedserver.metrics import ModelSeries

# While texts wait, requests past MAX_QUEUE_WAIT_S are looked for this often (`_sweep_expired`): a quarter
# of the bound, at most every _SWEEP_EVERY_S, at least every _SWEEP_FLOOR_S.
_SWEEP_EVERY_S = 0.25
_SWEEP_FLOOR_S = 0.01


class WaitingRequests:
    """One group per request, in arrival order, and the counts the worker's limits read: `texts` waiting
    here, and `tokens` of the texts here or cut and not yet done with (`settle` frees them)."""

    def __init__(self, model: str, limits: BatchLimits, series: ModelSeries) -> None:
        self._model = model
        self._limits = limits
        self._series = series
        self._requests: deque[QueuedRequest] = deque()
        self.texts = 0
        self.tokens = 0
        self._sweep: asyncio.TimerHandle | None = None  # the next `_sweep_expired`, while texts wait

    def add(self, request: QueuedRequest, tokens: int) -> None:
        """A request admitted by the worker, its texts waiting from now."""
        request.queued = True
        self._requests.append(request)
        self.texts += request.size
        self.tokens += tokens
        if self._sweep is None and self._limits.max_wait_s:
            self._sweep = asyncio.get_running_loop().call_later(self._sweep_every(), self._sweep_expired)

    def take(self) -> list[WorkItem]:
        """Up to window_batches batches' worth of texts, one from each waiting request in turn. Texts whose
        caller left are dropped; those of requests that waited past MAX_QUEUE_WAIT_S fail with 429
        queue_timeout."""
        limit = self._limits.max_size * self._limits.window_batches
        window: list[WorkItem] = []
        gone: list[WorkItem] = []
        requests = self._requests
        while requests and len(window) < limit:
            request = requests.popleft()
            waiting = request.waiting
            if request.future.done() or not waiting:  # its caller left, or it failed: drop what it has queued
                gone.extend(waiting)
                waiting.clear()
                request.queued = False
                continue
            window.append(waiting.popleft())
            if waiting:
                requests.append(request)  # its next text waits for the other requests' turn
            else:
                request.queued = False
        self.texts -= len(window) + len(gone)
        if gone:  # callers cancelled (clients went away): nobody wants these results
            self._series.dropped.inc(len(gone))
            self.settle(gone)
        kept, late = self.expire(window)
        self.settle(late)
        return kept

    def put_back(self, items: list[WorkItem]) -> None:
        """Texts taken and not run now, back at the heads of their requests in order, each request ahead of
        those that arrived after it."""
        # The requests to queue again, in the order of their first text put back: their turns as they were.
        returning = dict.fromkeys(item.request for item in items if not item.request.queued)
        for item in reversed(items):
            item.request.waiting.appendleft(item)
        for request in reversed(returning):
            request.queued = True
            self._requests.appendleft(request)
        self.texts += len(items)

    def expire(self, items: list[WorkItem]) -> tuple[list[WorkItem], list[WorkItem]]:
        """`items` split into those to run and those whose request has waited past MAX_QUEUE_WAIT_S since it
        was queued or last had a text computed, which fail with 429 queue_timeout: admission keeps this rare,
        this keeps it a bound when the machine slows down under the estimate. The wait is the request's, not
        the text's: a request of 2,048 texts takes longer than the bound by itself, and is fine while it
        progresses. The late are the caller's to `settle`."""
        max_wait = self._limits.max_wait_s
        if not max_wait:
            return items, []
        oldest = time.perf_counter() - max_wait
        late = [item for item in items if waiting_since(item.request) < oldest]
        if not late:
            return items, []
        self._fail({item.request for item in late}, len(late))
        return [item for item in items if not item.request.future.done()], late

    def settle(self, items: Sequence[WorkItem]) -> None:
        """Texts leave the worker (computed, failed, dropped or expired): their tokens free the budget."""
        self.tokens -= sum(len(item.ids) for item in items)

    def fail_all(self, exc: Exception) -> None:
        """Every waiting request fails with `exc` (the worker stops or died)."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self._requests:
            request = self._requests.popleft()
            request.queued = False
            request.fail(exc)
            self.settle(request.waiting)
            request.waiting.clear()
        self.texts = 0

    def _fail(self, requests: set[QueuedRequest] | list[QueuedRequest], expired: int) -> None:
        """`requests` fail with queue_timeout; `expired` of their texts were taken already, and those they
        still have waiting are never computed either (left, empty, for `take` to skip)."""
        error = self._queue_timeout()
        for request in requests:
            request.fail(error)
            rest = request.waiting
            expired += len(rest)
            self.texts -= len(rest)
            self.settle(rest)
            rest.clear()
        self._series.expired.inc(expired)

    def _sweep_every(self) -> float:
        return min(_SWEEP_EVERY_S, max(_SWEEP_FLOOR_S, self._limits.max_wait_s / 4))

    def _sweep_expired(self) -> None:
        """Waiting requests past MAX_QUEUE_WAIT_S with none of their texts in a pass fail now, as the next cut
        would fail them: a cut waits for the MLX thread, and a long pass (a real model on CPU takes minutes
        over a long text) would hold their 429 that long past the bound. A request with texts in a pass is
        left alone: it progresses. Runs while texts wait."""
        self._sweep = None
        oldest = time.perf_counter() - self._limits.max_wait_s
        late = [
            request
            for request in self._requests
            if not request.passes  # none of its texts in a pass
            and waiting_since(request) < oldest
            and not request.future.done()
        ]
        if late:
            self._fail(late, 0)
        if self.texts:
            self._sweep = asyncio.get_running_loop().call_later(self._sweep_every(), self._sweep_expired)

    def _queue_timeout(self) -> Overloaded:
        max_wait = self._limits.max_wait_s
        return Overloaded(
            f"model {self._model}: the text waited more than {max_wait:g} s (MAX_QUEUE_WAIT_S) for the model; "
            "retry later",
            code="queue_timeout",
            headers={"Retry-After": str(max(1, math.ceil(max_wait)))},
        )
