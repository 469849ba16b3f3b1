"""A worker's waiting requests on their own: texts taken one from each request in turn, texts put back ahead
of later requests, the tokens held until settled, callers that left dropped, and the wait bound's 429."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from embedserver.batching.limits import BatchLimits
from embedserver.batching.queued import QueuedRequest, WorkItem
from embedserver.batching.waiting import WaitingRequests
from embedserver.errors import Overloaded
from embedserver.metrics import Metrics


def _waiting(metrics: Metrics, *, max_size: int = 8, max_wait_s: float = 0.0) -> WaitingRequests:
    limits = BatchLimits(
        max_size=max_size, max_tokens=4096, wait_s=0.001, max_queue=1000, max_wait_s=max_wait_s
    )
    return WaitingRequests("m", limits, metrics.for_model("m"))


def _request(*lengths: int) -> QueuedRequest:
    future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
    return QueuedRequest([[7] * n for n in lengths], future)


def _rows(items: list[WorkItem], *requests: QueuedRequest) -> list[tuple[int, int]]:
    """Each item as (which of `requests`, its row)."""
    return [(requests.index(item.request), item.row) for item in items]


async def test_texts_are_taken_one_from_each_request_in_turn_and_put_back_in_order() -> None:
    waiting = _waiting(Metrics(), max_size=2)  # a window of 2 x 8 texts
    bulk, query, other = _request(3, 3, 3, 3), _request(5), _request(2, 2)
    for request in (bulk, query, other):
        waiting.add(request, sum(len(item.ids) for item in request.waiting))
    assert (waiting.texts, waiting.tokens) == (7, 21)
    window = waiting.take()
    assert _rows(window, bulk, query, other) == [(0, 0), (1, 0), (2, 0), (0, 1), (2, 1), (0, 2), (0, 3)]
    assert waiting.texts == 0 and waiting.tokens == 21  # taken, not done with: still held
    waiting.put_back([window[3], window[4], window[6]])  # bulk row 1, other row 1, bulk row 3
    later = _request(1)
    waiting.add(later, 1)
    assert waiting.texts == 4
    # bulk ahead of other again (its text came first), the later request behind both
    assert _rows(waiting.take(), bulk, query, other, later) == [(0, 1), (2, 1), (3, 0), (0, 3)]
    waiting.settle(window)
    assert waiting.tokens == 1  # only the later request's text is held now


async def test_the_texts_of_a_caller_that_left_are_dropped_and_free_their_tokens() -> None:
    metrics = Metrics()
    waiting = _waiting(metrics)
    left, kept = _request(4, 4), _request(2)
    waiting.add(left, 8)
    waiting.add(kept, 2)
    left.future.cancel()
    assert _rows(waiting.take(), left, kept) == [(1, 0)]
    assert (waiting.texts, waiting.tokens) == (0, 2)
    assert metrics.dropped.labels("m")._value.get() == 2


async def test_a_request_past_the_wait_bound_fails_with_queue_timeout_and_none_of_its_texts_run() -> None:
    metrics = Metrics()
    waiting = _waiting(metrics, max_size=1, max_wait_s=30.0)  # a window of 8 texts
    old, new = _request(3, 3, 3, 3, 3, 3, 3, 3, 3), _request(3)
    waiting.add(old, 27)
    waiting.add(new, 3)
    old.enqueued = time.perf_counter() - 31.0
    # Seven of old's texts were taken (late: the request fails whole); its two left never run either.
    assert _rows(waiting.take(), old, new) == [(1, 0)]
    with pytest.raises(Overloaded) as failed:
        old.future.result()
    assert failed.value.code == "queue_timeout" and failed.value.status == 429
    assert failed.value.headers == {"Retry-After": "30"}
    assert metrics.expired.labels("m")._value.get() == 9
    assert (waiting.texts, waiting.tokens) == (0, 3)
    assert waiting.take() == []


async def test_the_sweep_fails_a_late_request_between_takes_and_stops_when_nothing_waits() -> None:
    metrics = Metrics()
    waiting = _waiting(metrics, max_wait_s=0.04)  # swept every 10 ms
    late = _request(2, 2)
    waiting.add(late, 4)
    with pytest.raises(Overloaded):
        await asyncio.wait_for(late.future, 1.0)
    assert (waiting.texts, waiting.tokens) == (0, 0)
    assert metrics.expired.labels("m")._value.get() == 2
    await asyncio.sleep(0.05)
    assert waiting._sweep is None  # nothing waits: no timer left behind


async def test_failing_all_answers_every_waiting_request_and_stops_the_sweep() -> None:
    waiting = _waiting(Metrics(), max_wait_s=10.0)
    first, second = _request(2), _request(3, 3)
    waiting.add(first, 2)
    waiting.add(second, 6)
    waiting.fail_all(RuntimeError("unloaded"))
    for request in (first, second):
        with pytest.raises(RuntimeError, match="unloaded"):
            request.future.result()
    assert (waiting.texts, waiting.tokens) == (0, 0) and waiting._sweep is None
