"""Forward passes launched and collected as two jobs on the MLX thread (embedserver/batching/passes.py): the
order the thread runs them in, the timing the worker reads, and that every launched pass is collected."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from embedserver.batching.passes import Abandoned, Passes
from embedserver.batching.worker import BatchLimits, BatchWorker
from embedserver.metrics import Metrics


class Device:
    """A stand-in GPU: `launch` returns at once; a pass's `collect` blocks until the test finishes the pass
    (`finish(name)`), or at once once `free_run` is set. Every job the MLX thread runs is logged in order; a
    pass is named by its first text's first id, and its vectors are [first id, texts]."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []
        self.finished: dict[int, threading.Event] = {}
        self.free_run = threading.Event()
        self.fail_launch: set[int] = set()
        self.fail_collect: set[int] = set()

    def finish(self, name: int) -> None:
        self.finished.setdefault(name, threading.Event()).set()

    def embed(self, batch: list[list[int]]) -> np.ndarray:
        self.log.append(("whole", batch[0][0]))
        return self._vectors(batch)

    def launch(self, batch: list[list[int]]) -> _Pass:
        name = batch[0][0]
        self.log.append(("launch", name))
        if name in self.fail_launch:
            raise RuntimeError(f"launch {name}")
        return _Pass(self, name, self._vectors(batch))

    @staticmethod
    def _vectors(batch: list[list[int]]) -> np.ndarray:
        return np.array([[seq[0], len(batch)] for seq in batch], dtype=np.float32)


class _Pass:
    def __init__(self, device: Device, name: int, vectors: np.ndarray) -> None:
        self.device, self.name, self.vectors = device, name, vectors

    def collect(self) -> np.ndarray:
        device = self.device
        device.log.append(("collect", self.name))
        if not device.free_run.is_set():
            assert device.finished.setdefault(self.name, threading.Event()).wait(10), "pass never finished"
        if self.name in device.fail_collect:
            raise RuntimeError(f"collect {self.name}")
        return self.vectors


@pytest.fixture
async def device() -> AsyncIterator[tuple[Device, Passes]]:
    dev = Device()
    executor = ThreadPoolExecutor(1)
    yield dev, Passes(executor, dev.embed, dev.launch)
    dev.free_run.set()
    executor.shutdown(wait=True)


def _never() -> bool:
    return False


async def _until(condition: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.002)


async def test_a_pass_is_collected_behind_the_next_launch(device: tuple[Device, Passes]) -> None:
    dev, passes = device
    first = asyncio.ensure_future(
        passes.run([[1], [1]], _never, (2, 16), more_coming=lambda: True, expected_s=5.0)
    )
    await _until(lambda: dev.log == [("launch", 1)])
    await asyncio.sleep(0.05)
    assert dev.log == [("launch", 1)]  # more is coming: the first pass is not collected yet
    assert passes.began > 0 and passes.shape == (2, 16)  # the device began on it at its launch
    began_first = passes.began
    second = asyncio.ensure_future(passes.run([[2]], _never, (1, 16), more_coming=_never, expected_s=5.0))
    await _until(lambda: len(dev.log) == 3)
    # The second pass was queued on the device before the thread waited for the first.
    assert dev.log == [("launch", 1), ("launch", 2), ("collect", 1)]
    assert passes.shape == (2, 16) and passes.began == began_first  # still on the first
    dev.finish(1)
    outcome = await first
    assert outcome.vectors.tolist() == [[1, 2], [1, 2]] and outcome.finite
    # The device went on to the second pass when the first was collected: its timing starts there.
    assert passes.shape == (1, 16) and passes.began > began_first
    dev.finish(2)
    assert (await second).vectors.tolist() == [[2, 1]]
    assert dev.log[-1] == ("collect", 2) and passes.in_flight == 0


async def test_a_lone_pass_runs_whole_in_one_job(device: tuple[Device, Passes]) -> None:
    dev, passes = device
    dev.free_run.set()
    outcome = await passes.run([[5]], _never, (1, 16), more_coming=_never, expected_s=1.0)
    assert outcome.vectors.tolist() == [[5, 1]] and dev.log == [("whole", 5)]


async def test_without_a_next_launch_a_pass_is_collected_after_twice_its_expected_time(
    device: tuple[Device, Passes],
) -> None:
    dev, passes = device
    dev.free_run.set()
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcome = await passes.run([[3]], _never, (1, 16), more_coming=lambda: True, expected_s=0.1)
    assert outcome.vectors.tolist() == [[3, 1]]
    assert dev.log == [("launch", 3), ("collect", 3)]
    assert 0.15 <= loop.time() - started < 2.0
    # Unknown duration (a shape not seen yet): collected at once.
    await passes.run([[4]], _never, (1, 16), more_coming=lambda: True, expected_s=0.0)
    assert dev.log[-2:] == [("launch", 4), ("collect", 4)]


async def test_a_cancelled_caller_still_has_its_pass_collected(device: tuple[Device, Passes]) -> None:
    dev, passes = device
    caller = asyncio.ensure_future(
        passes.run([[7]], _never, (1, 16), more_coming=lambda: True, expected_s=5.0)
    )
    await _until(lambda: dev.log == [("launch", 7)])
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    dev.free_run.set()
    nxt = await passes.run([[8]], _never, (1, 16), more_coming=_never, expected_s=5.0)
    await _until(lambda: ("collect", 7) in dev.log)
    assert nxt.vectors.tolist() == [[8, 1]] and passes.in_flight == 0
    # The launch of 8 went behind 7, which was then collected: nothing is left on the device's books.
    assert dev.log[:3] == [("launch", 7), ("launch", 8), ("collect", 7)]


async def test_failures_reach_the_caller_and_leave_nothing_behind(device: tuple[Device, Passes]) -> None:
    dev, passes = device
    dev.free_run.set()
    dev.fail_launch.add(1)
    dev.fail_collect.add(2)
    coming = lambda: True  # noqa: E731
    with pytest.raises(RuntimeError, match="launch 1"):
        await passes.run([[1]], _never, (1, 16), more_coming=coming, expected_s=0.0)
    with pytest.raises(RuntimeError, match="collect 2"):
        await passes.run([[2]], _never, (1, 16), more_coming=coming, expected_s=0.0)
    assert passes.in_flight == 0
    # A pass launched now finds the device free: its timing starts at its own launch.
    before = passes.began
    await passes.run([[3]], _never, (4, 32), more_coming=coming, expected_s=0.0)
    assert passes.shape == (4, 32) and passes.began > before


async def test_a_pass_whose_callers_all_left_is_not_run(device: tuple[Device, Passes]) -> None:
    dev, passes = device
    for coming in (_never, lambda: True):
        with pytest.raises(Abandoned):
            await passes.run([[9]], lambda: True, (1, 16), more_coming=coming, expected_s=0.0)
    assert dev.log == [] and passes.in_flight == 0


async def test_worker_overlaps_passes_under_backlog_and_answers_every_request() -> None:
    """Many requests against a worker whose passes are launched and collected: each gets its own vectors,
    and while a backlog waited, the next pass was launched before the running one was collected."""
    dev = Device()
    dev.free_run.set()
    limits = BatchLimits(max_size=4, max_tokens=4096, wait_s=0.001, max_queue=1000)
    executor = ThreadPoolExecutor(1)
    w = BatchWorker(
        "m",
        dev.embed,
        limits=limits,
        metrics=Metrics(),
        executor=executor,
        bucketed_rows=True,
        launch=dev.launch,
    )
    w.start()
    try:
        results = await asyncio.gather(*(w.submit([[n, 0], [n, 1]]) for n in range(1, 41)))
    finally:
        await w.stop()
        executor.shutdown(wait=True)
    for n, vectors in enumerate(results, start=1):
        assert vectors[:, 0].tolist() == [n, n]
    # Passes on the device at once (launched, not yet collected): two while the backlog lasted, none at the end.
    on_device = peak = 0
    for job, _ in dev.log:
        on_device += {"launch": 1, "collect": -1}.get(job, 0)
        peak = max(peak, on_device)
    assert peak == 2 and on_device == 0, dev.log
