"""One forward pass of the overlapped batch worker (GPUs): launched on the MLX thread, collected (waited for
and read) on the worker's collector thread, answered on the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from embedserver.batching.queued import QueuedRequest, WorkItem
from embedserver.tokenization.token_ids import TokenIds

# A batch's token ids in, a function that waits for its pass and returns the vectors out (ModelRunner.launch).
LaunchFn = Callable[[list[TokenIds]], Callable[[], np.ndarray]]


class RemotePasses(Protocol):
    """Passes run by a model in another process (MODEL_PROCESS: embedserver/server/model_process.py), driven
    from the event loop: no thread of this process waits for them."""

    async def launch(self, launched: LaunchedPass, alone: Callable[[], bool]) -> None:
        """Returns once the pass is queued there; or with `launched.collected` set when its outcome is in
        already (run whole because `alone()`, not run because its callers left, or failed)."""

    def collected(self, launched: LaunchedPass) -> asyncio.Future[None]:
        """Resolves once a launched pass's outcome (vectors and non-finite count, or error) is in `launched`."""

    async def run(self, sequences: list[TokenIds]) -> tuple[np.ndarray, float, float, int]:
        """A whole pass: the vectors, when it started, its duration, and its non-finite vectors' count."""


class LaunchedPass:
    """A batch, its padded shape, and what became of its pass. `launch` runs on the MLX thread, `collect` on
    the collector thread (waiting on an array MLX has queued touches only that array's event, which CUDA and
    MLX's CPU scheduler both let any thread wait on); the event loop reads the outcome once `collected` is
    set."""

    __slots__ = (
        "_wait",
        "abandoned",
        "bad",
        "batch",
        "collected",
        "error",
        "requests",
        "seconds",
        "shape",
        "started",
        "vectors",
    )

    def __init__(self, batch: list[WorkItem], shape: tuple[int, int]) -> None:
        self.batch = batch
        self.requests: list[QueuedRequest] = [item.request for item in batch]
        self.shape = shape
        self.started = 0.0
        self.seconds = 0.0  # the device pipeline's time on this pass (see collect)
        self.vectors: np.ndarray | None = None
        self.bad = 0  # vectors holding a non-finite value
        self.error: Exception | None = None
        self.abandoned = False  # every caller left before it was launched: not run
        self.collected = False
        self._wait: Callable[[], np.ndarray] | None = None

    def launch(
        self, launch: LaunchFn, embed: Callable[[list[TokenIds]], np.ndarray], alone: Callable[[], bool]
    ) -> None:
        """Queue the pass (reading done() from this thread is a benign race: at worst one batch runs for
        nobody). A failure to launch is its outcome, collected at once. A pass that would be `alone` (nothing
        waits to follow it, nothing runs before it) runs whole here instead, as `embed`: overlapping gains it
        nothing, and with its wait on the collector thread a lone 128-token text's pass read 7.1-7.3 ms against
        5.5 run whole (H200, same call; the cause was not isolated)."""
        if all(request.future.done() for request in self.requests):
            self.abandoned = self.collected = True
            return
        self.started = time.perf_counter()
        sequences = [item.ids for item in self.batch]
        try:
            if alone():
                self._read(embed(sequences))
                self.seconds = time.perf_counter() - self.started
                self.collected = True
                return
            self._wait = launch(sequences)
        except Exception as exc:
            self.error, self.collected = exc, True

    def _read(self, vectors: np.ndarray) -> None:
        self.bad = non_finite_rows(vectors)
        self.vectors = vectors

    def collect(self, previous_end: float) -> float:
        """Wait for the pass and count its non-finite vectors. Its time is from its launch, or from the end of
        the pass before it if that ended later: what this pass added to the device's queue. Returns when it
        ended."""
        wait, self._wait = self._wait, None
        assert wait is not None
        try:
            self._read(wait())
        except Exception as exc:
            self.error = exc
        ended = time.perf_counter()
        self.seconds = ended - max(self.started, previous_end)
        self.collected = True
        return ended


def non_finite_rows(vectors: np.ndarray) -> int:
    """How many vectors hold a NaN or an infinity (counted where the pass is read, off the event loop)."""
    return int((~np.isfinite(vectors).all(axis=1)).sum())
