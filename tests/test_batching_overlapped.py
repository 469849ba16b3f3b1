"""The batch worker with overlapped passes (GPUs): the MLX thread launches, a collector thread waits for each
pass, and a scripted device decides when a pass ends. Also the real runner through it (MLX on the CPU)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from embedserver.batching.launched import non_finite_rows
from embedserver.batching.limits import BatchLimits
from embedserver.batching.worker import BatchWorker
from embedserver.catalog import ModelSpec
from embedserver.errors import InferenceError, ModelUnavailable
from embedserver.metrics import Metrics
from embedserver.runtime.loader import load_runner
from embedserver.tokenization.token_ids import TokenIds

LIMITS = BatchLimits(max_size=8, max_tokens=4096, wait_s=0.005, max_queue=100)


class Device:
    """launch() stand-in: vector = [len(seq), first id]. A first id of 666 fails the launch, 555 the
    collection, 777 gives NaN. Passes end in launch order once `release` lets them (all at once by default)."""

    def __init__(self, *, held: bool = False) -> None:
        self.events: list[str] = []
        self.launched: list[list[int]] = []
        self.collectors: list[str] = []  # the thread of each collection
        self._open = threading.Semaphore(0)
        self._held = held
        self._lock = threading.Lock()

    def release(self, passes: int = 1) -> None:
        for _ in range(passes):
            self._open.release()

    def launch(self, batch: Sequence[TokenIds]) -> Callable[[], np.ndarray]:
        firsts = [int(seq[0]) for seq in batch]
        with self._lock:
            self.launched.append(firsts)
            self.events.append(f"launch {firsts}")
        if 666 in firsts:
            raise RuntimeError("poison at launch")
        out = np.array([[len(seq), seq[0]] for seq in batch], dtype=np.float32)
        out[[first == 777 for first in firsts]] = np.nan

        def collect() -> np.ndarray:
            if self._held:
                assert self._open.acquire(timeout=10), "the test never let this pass end"
            with self._lock:
                self.events.append(f"collect {firsts}")
                self.collectors.append(threading.current_thread().name)
            if 555 in firsts:
                raise RuntimeError("poison at collection")
            return out

        return collect

    def embed(self, batch: Sequence[TokenIds]) -> np.ndarray:
        return self.launch(batch)()


def _worker(device: Device, metrics: Metrics | None = None) -> BatchWorker:
    return BatchWorker(
        "m",
        device.embed,
        launch=device.launch,
        limits=LIMITS,
        metrics=metrics or Metrics(),
        executor=ThreadPoolExecutor(1),
    )


@pytest.fixture
async def worker() -> AsyncIterator[BatchWorker]:
    w = _worker(Device())
    w.start()
    yield w  # type: ignore[misc]
    await w.stop()


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


async def test_results_match_their_inputs(worker: BatchWorker) -> None:
    results = await asyncio.gather(*(worker.submit([[k, 2, 3], [k + 1]]) for k in range(1, 40)))
    for k, result in enumerate(results, start=1):
        assert result.tolist() == [[3, k], [1, k + 1]]


async def test_a_bad_input_fails_only_its_own_request_at_launch_or_collection(worker: BatchWorker) -> None:
    """A pass that fails to launch, fails on the device, or gives NaN is retried text by text: only the
    request holding the bad text fails."""
    results = await asyncio.gather(
        worker.submit([[1]]),
        worker.submit([[5], [666]]),
        worker.submit([[2, 2]]),
        worker.submit([[555, 1]]),
        worker.submit([[777]]),
        worker.submit([[3]]),
        return_exceptions=True,
    )
    assert results[0].tolist() == [[1, 1]] and results[2].tolist() == [[2, 2]]  # type: ignore[union-attr]
    assert results[5].tolist() == [[1, 3]]  # type: ignore[union-attr]
    assert isinstance(results[1], RuntimeError) and "launch" in str(results[1])
    assert isinstance(results[3], RuntimeError) and "collection" in str(results[3])
    assert isinstance(results[4], InferenceError)
    assert (await worker.submit([[9]])).tolist() == [[1, 9]]  # and it keeps serving


async def test_the_next_pass_launches_while_the_device_computes_the_last() -> None:
    """The point of overlapping: with work waiting, the MLX thread launches the next pass before the running
    one has ended; a third waits until one of the two is answered."""
    device = Device(held=True)
    w = _worker(device)
    gate = threading.Event()
    w._executor.submit(gate.wait)  # the MLX thread is busy: the first batch is cut and waits to launch
    w.start()
    first = w.submit([[1]])
    await asyncio.sleep(0.05)
    second, third = w.submit([[2]]), w.submit([[3]])  # waiting behind it as it launches: not alone
    gate.set()
    await _until(lambda: len(device.launched) == 2)
    await asyncio.sleep(0.05)
    assert device.launched == [[1], [2, 3]] and not first.done()  # launched behind the running pass
    fourth = w.submit([[4]])
    await asyncio.sleep(0.05)
    assert len(device.launched) == 2  # two in flight: the fourth waits
    device.release()
    assert (await first).tolist() == [[1, 1]]
    await _until(lambda: len(device.launched) == 3)
    device.release(2)
    assert [(await f).tolist() for f in (second, third, fourth)] == [[[1, 2]], [[1, 3]], [[1, 4]]]
    assert device.events == [
        "launch [1]",
        "launch [2, 3]",
        "collect [1]",
        "launch [4]",
        "collect [2, 3]",
        "collect [4]",
    ]
    assert all(name.startswith("collect") for name in device.collectors)  # the worker's collector thread
    await w.stop()


async def test_a_pass_alone_runs_whole_on_the_mlx_thread() -> None:
    """Nothing to overlap with: one request alone is computed as without overlapping, launched and waited
    for on the MLX thread in one go (no hand-over to the collector thread)."""
    device = Device()
    w = _worker(device)
    w.start()
    for k in range(3):
        assert (await w.submit([[k + 1, 5]])).tolist() == [[2, k + 1]]
    assert len(device.collectors) == 3 and not any(name.startswith("collect") for name in device.collectors)
    await w.stop()


async def test_a_pass_of_one_requests_texts_runs_whole_and_one_of_several_requests_overlaps() -> None:
    """A client alone sends one request at a time, however many texts: its pass runs whole. A pass of several
    requests is load, with more to come, even when nothing waits behind it as it launches: it is launched and
    collected on the collector thread, so the next cut need not wait for it (a worker whose every pass ran
    whole never overlapped again under load)."""
    device = Device()
    w = _worker(device)
    w.start()
    assert (await w.submit([[1, 5], [2], [3, 5, 5]])).tolist() == [[2, 1], [1, 2], [3, 3]]
    assert len(device.collectors) == 1 and not device.collectors[0].startswith("collect")
    together = [w.submit([[4]]), w.submit([[5, 5]])]  # one loop turn: cut into one batch
    assert [(await f).tolist() for f in together] == [[[1, 4]], [[2, 5]]]
    assert device.launched[-1] == [4, 5]
    assert len(device.collectors) == 2 and device.collectors[1].startswith("collect")
    await w.stop()


async def test_stop_fails_the_passes_in_flight() -> None:
    device = Device(held=True)
    w = _worker(device)
    w.start()
    gate = threading.Event()
    w._executor.submit(gate.wait)
    waiting = [w.submit([[1]])]
    await asyncio.sleep(0.05)
    waiting.append(w.submit([[2]]))
    gate.set()
    await _until(lambda: len(device.launched) == 2)
    await w.stop()
    for future in waiting:
        with pytest.raises(ModelUnavailable):
            await future
    assert not w.busy
    device.release(2)  # the collector thread's wait ends; nobody reads its pass


async def test_a_collection_that_breaks_leaves_no_request_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in the collector thread's own step (not in the pass) fails the pass like any failure: a batch of
    one text fails its request, a larger one's texts are retried alone on the MLX thread and answered."""
    device = Device()
    w = _worker(device)

    def broken(launched: object) -> None:
        raise RuntimeError("collector bug")

    monkeypatch.setattr(w, "_collect", broken)
    gate = threading.Event()
    w._executor.submit(gate.wait)
    w.start()
    first = w.submit([[1]])
    await asyncio.sleep(0.05)
    second = w.submit([[2, 2], [3]])  # waiting as the first launches: both passes are overlapped
    gate.set()
    with pytest.raises(RuntimeError, match="collector bug"):
        await asyncio.wait_for(first, 5)
    assert (await asyncio.wait_for(second, 5)).tolist() == [[2, 2], [1, 3]]
    await w.stop()


async def test_a_batch_whose_callers_left_is_not_launched() -> None:
    device = Device()
    metrics = Metrics()
    w = _worker(device, metrics)
    gate = threading.Event()
    w._executor.submit(gate.wait)  # the MLX thread is busy: the batch is cut and waits to launch
    w.start()
    future = w.submit([[1], [2]])
    await asyncio.sleep(0.05)
    future.cancel()
    gate.set()
    await _until(lambda: not w.busy)
    assert device.launched == []
    assert metrics.registry.get_sample_value("embedserver_dropped_total", {"model": "m"}) == 2
    await w.stop()


async def test_passes_are_recorded(worker: BatchWorker) -> None:
    metrics = worker._metrics
    await asyncio.gather(worker.submit([[1, 2, 3]]), worker.submit([[4, 5]]))
    await asyncio.sleep(0)

    def sample(name: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"model": "m"})

    assert sample("embedserver_tokens_total") == 5 and sample("embedserver_texts_total") == 2
    assert sample("embedserver_queue_wait_seconds_count") == 2
    passes = sample("embedserver_batches_total")
    assert passes and sample("embedserver_inference_seconds_count") == passes


async def test_the_runner_overlapped_equals_the_runner_alone(tiny_qwen3: Path) -> None:
    """Real MLX: passes launched on one thread and waited for on another give the vectors of passes run
    whole (on the CPU here; on CUDA the same code waits on a CUDA event)."""
    mlx_thread = ThreadPoolExecutor(1)
    runner = mlx_thread.submit(load_runner, ModelSpec(name="t", source=str(tiny_qwen3))).result()
    texts = [f"text number {k} " * (1 + k % 7) for k in range(48)]
    ids = runner.tokenizer.encode_batch(texts)
    alone = [mlx_thread.submit(runner.embed, [seq]).result()[0] for seq in ids]
    w = BatchWorker(
        "t", runner.embed, launch=runner.launch, limits=LIMITS, metrics=Metrics(), executor=mlx_thread
    )
    w.start()
    results = await asyncio.gather(*(w.submit([seq]) for seq in ids))
    await w.stop()
    for got, want in zip(results, alone, strict=True):
        np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-4)


def test_non_finite_rows_counts_rows_with_nan_or_either_infinity() -> None:
    vectors = np.ones((6, 1024), dtype=np.float32)
    vectors[1, 5] = np.nan
    vectors[2, 0] = np.inf
    vectors[3, 1023] = -np.inf
    vectors[4, [7, 9]] = (np.inf, -np.inf)  # inf + -inf: NaN, still counted once
    vectors[5] = 1e30  # large but finite: not counted
    assert non_finite_rows(vectors) == 4
    assert non_finite_rows(np.zeros((3, 8), dtype=np.float32)) == 0
