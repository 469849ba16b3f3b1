"""Admission: whether a model takes a request now, from the work already in progress and the rate the model
clears it, so a full backlog answers 429 at once instead of queueing work that would wait past
MAX_QUEUE_WAIT_S (the batch worker holds one; the services enter `admit` around tokenizing and computing).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter

from embedserver.batching.limits import BatchLimits
from embedserver.errors import Overloaded


class Admission:
    def __init__(self, model: str, limits: BatchLimits, rejected: Counter) -> None:
        self._model = model
        self._limits = limits
        self._rejected = rejected  # the model's counter of texts refused
        self.texts = 0  # texts inside admit() blocks
        self.requests = 0  # and the requests they belong to
        self.rate = 0.0  # texts/s cleared under backlog (see `observe`); 0 until measured
        self._last_done = 0.0
        self._backlogged = False

    @contextmanager
    def admit(self, texts: int) -> Iterator[None]:
        """Hold `texts` places in the model's backlog (texts being tokenized, queued or running) while the
        block runs (see `reserve`)."""
        self.reserve(texts)
        try:
            yield
        finally:
            self.release(texts)

    def reserve(self, texts: int) -> None:
        """Take `texts` places in the backlog until `release`. A full backlog answers 429 at once, before the
        request costs any tokenization or queueing; a request alone is always admitted, however large, so no
        request is refused forever.

        The wait estimated is what the work already in progress adds to this request's own, as batches take
        texts one from each request in turn (`WaitingRequests.take`): each request in progress holds back
        a request of k texts by up to k of its own. With single-text requests that is the whole backlog; a
        query behind a bulk request of 2,048 texts waits for one of them, and a bulk request behind a query for
        one text, so each shares the next passes instead of being refused. The request's own work is not
        counted, as the worker cuts a request that waits without progress and never one that progresses: a
        request that alone takes longer than the bound (a CPU's passes) would otherwise be refused whenever
        anything ran."""
        admitted = self.texts
        if admitted:
            ahead = self.requests * texts  # per request in progress, at most k of its texts
            if ahead > admitted:
                ahead = admitted
            rate = self.rate
            wait = ahead / rate if rate else 0.0
            limits = self._limits
            if admitted + texts > limits.max_queue or (limits.max_wait_s and wait > limits.max_wait_s):
                self._rejected.inc(texts)
                raise Overloaded(
                    f"model {self._model} has {admitted} texts in progress, about {wait:.1f} s of work "
                    f"ahead of this request (limits: MAX_QUEUE_TEXTS {limits.max_queue}, MAX_QUEUE_WAIT_S "
                    f"{limits.max_wait_s:g}); retry later",
                    headers={"Retry-After": str(max(1, math.ceil(min(wait, 60))))},
                )
        self.texts = admitted + texts
        self.requests += 1

    def release(self, texts: int) -> None:
        self.texts -= texts
        self.requests -= 1

    def observe(self, texts: int, *, backlogged: bool) -> None:
        """A pass of `texts` was computed; `backlogged`: work waits behind it now. The rate is texts per second
        of wall time between passes while a backlog waited: what a new request would wait for (the forward pass
        alone overstates it: tokenization, the event loop and other processes share the machine). Idle gaps
        are not measured, so light load leaves the estimate alone."""
        now = time.perf_counter()
        if self._backlogged:
            sample = texts / max(now - self._last_done, 1e-6)
            self.rate = sample if not self.rate else 0.9 * self.rate + 0.1 * sample
        self._last_done = now
        self._backlogged = backlogged
