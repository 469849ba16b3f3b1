"""Batch collection as a pure function, and the worker's behaviour with a scripted embed function."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from embedserver.batching.limits import BatchLimits
from embedserver.batching.pass_budget import FIRST_PASS_TOKENS, PassBudget
from embedserver.batching.planning import plan_batches
from embedserver.batching.queued import QueuedRequest, WorkItem
from embedserver.batching.worker import BatchWorker
from embedserver.errors import InferenceError, ModelUnavailable, Overloaded
from embedserver.metrics import Metrics
from embedserver.runtime.padding import bucket_length
from embedserver.tokenization.token_ids import TokenIds


def _items(*lengths: int) -> list[WorkItem]:
    loop = asyncio.new_event_loop()
    try:
        return [QueuedRequest([list(range(1, n + 1))], loop.create_future()).waiting[0] for n in lengths]
    finally:
        loop.close()


@pytest.mark.parametrize(
    ("lengths", "max_size", "max_tokens", "expected"),
    [
        ([5, 3, 9, 1], 8, 10_000, [[1, 3, 5, 9]]),  # sorted by length
        ([1, 2, 3, 4, 5], 2, 10_000, [[1, 2], [3, 4], [5]]),  # count cap
        # token cap: padded cost = bucket(longest) x count; 16 x 2 = 32 fits, 48 x ... does not
        ([10, 10, 40, 40], 8, 64, [[10, 10], [40], [40]]),
        ([500], 8, 64, [[500]]),  # a single text always forms a batch
        ([], 8, 64, []),
    ],
)
def test_plan_batches(lengths: list[int], max_size: int, max_tokens: int, expected: list[list[int]]) -> None:
    batches = plan_batches(_items(*lengths), max_size=max_size, max_tokens=max_tokens)
    assert [[len(item.ids) for item in batch] for batch in batches] == expected


@pytest.mark.parametrize(
    ("lengths", "split_tokens", "expected"),
    [
        # Queries with passages: padding six 16-token texts to 256 (+1,440 tokens) is worth another pass at 64.
        ([16] * 6 + [256] * 2, 64, [[16] * 6, [256] * 2]),
        # ... and not where another pass is worth more than that padding (GPUs).
        ([16] * 6 + [256] * 2, 2048, [[16] * 6 + [256] * 2]),
        # Lengths within twice each other share a pass however many they are.
        ([90] * 40 + [110] * 40, 64, [[90] * 40 + [110] * 40]),
        ([16] * 100 + [30], 64, [[16] * 100 + [30]]),  # padded to 32: twice, not more
        # Each length group its own pass once the next more than doubles the padding.
        ([10, 10, 10, 100, 100, 300], 16, [[10, 10, 10], [100, 100], [300]]),
        ([16] * 6 + [256] * 2, 0, [[16] * 6 + [256] * 2]),  # off
    ],
)
def test_plan_batches_splits_where_padding_costs_more_than_a_pass(
    lengths: list[int], split_tokens: int, expected: list[list[int]]
) -> None:
    batches = plan_batches(_items(*lengths), max_size=256, max_tokens=32768, split_tokens=split_tokens)
    assert [[len(item.ids) for item in batch] for batch in batches] == expected


def test_plan_batches_keeps_every_item_once() -> None:
    items = _items(*np.random.default_rng(0).integers(1, 300, size=200).tolist())
    batches = plan_batches(items, max_size=16, max_tokens=2048)
    flat = [item for batch in batches for item in batch]
    assert sorted(map(id, flat)) == sorted(map(id, items))
    assert all(len(b) <= 16 for b in batches)


class Scripted:
    """embed() stand-in: vector = [len(seq), first id]; raises for sequences starting with 666, NaN for 777."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, batch: list[TokenIds]) -> np.ndarray:
        self.calls.append(len(batch))
        if any(seq[0] == 666 for seq in batch):
            raise RuntimeError("poison")
        out = np.array([[len(seq), seq[0]] for seq in batch], dtype=np.float32)
        out[[seq[0] == 777 for seq in batch]] = np.nan
        return out


class HeldOn(Scripted):
    """Scripted, but a batch whose first text starts with `first` holds the MLX thread until `release`."""

    def __init__(self, first: int, release: threading.Event) -> None:
        super().__init__()
        self.first = first
        self.release = release

    def __call__(self, batch: list[TokenIds]) -> np.ndarray:
        if batch[0][0] == self.first:
            self.release.wait(10)
        return super().__call__(batch)


@pytest.fixture
async def worker() -> AsyncIterator[BatchWorker]:
    limits = BatchLimits(max_size=8, max_tokens=4096, wait_s=0.005, max_queue=20)
    w = BatchWorker("m", Scripted(), limits=limits, metrics=Metrics(), executor=ThreadPoolExecutor(1))
    w.start()
    yield w  # type: ignore[misc]
    await w.stop()


async def test_results_match_their_inputs(worker: BatchWorker) -> None:
    results = await worker.submit([[1, 2, 3], [4], [5, 6]])
    assert results.tolist() == [[3, 1], [1, 4], [2, 5]]  # one row per text, in order


async def test_one_bad_input_fails_only_its_own_request(worker: BatchWorker) -> None:
    """Requests sharing a batch with a text that breaks the pass are answered (each text is retried alone);
    the request holding the bad text fails as a whole."""
    results = await asyncio.gather(
        worker.submit([[1]]), worker.submit([[5], [666]]), worker.submit([[2, 2]]), return_exceptions=True
    )
    assert results[0].tolist() == [[1, 1]] and results[2].tolist() == [[2, 2]]  # type: ignore[union-attr]
    assert isinstance(results[1], RuntimeError)
    # and the worker keeps serving
    assert (await worker.submit([[9]])).tolist() == [[1, 9]]


async def test_non_finite_embedding_is_an_error_not_a_result(worker: BatchWorker) -> None:
    results = await asyncio.gather(worker.submit([[777]]), worker.submit([[3]]), return_exceptions=True)
    assert isinstance(results[0], InferenceError)
    assert results[1].tolist() == [[1, 3]]  # type: ignore[union-attr]


async def test_callers_resume_before_the_pass_is_recorded() -> None:
    """A pass's metrics (a dozen histogram and counter updates) are recorded after its callers have resumed,
    so a lone request does not wait for them; one turn of the loop later they are all there."""
    limits = BatchLimits(max_size=8, max_tokens=4096, wait_s=0.005, max_queue=20)
    metrics = Metrics()
    w = BatchWorker("m", Scripted(), limits=limits, metrics=metrics, executor=ThreadPoolExecutor(1))
    w.start()
    await w.submit([[1, 2]])

    def sample(name: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"model": "m"})

    assert sample("embedserver_batches_total") in (None, 0.0)
    await asyncio.sleep(0)
    assert sample("embedserver_batches_total") == 1 and sample("embedserver_tokens_total") == 2
    assert sample("embedserver_queue_wait_seconds_count") == 1
    with pytest.raises(RuntimeError):  # a failed batch's texts waited in the queue too
        await w.submit([[666]])
    await asyncio.sleep(0)
    assert sample("embedserver_queue_wait_seconds_count") == 2
    await w.stop()


async def test_full_backlog_answers_overloaded_at_once(worker: BatchWorker) -> None:
    with worker.admit(15):
        with pytest.raises(Overloaded) as info, worker.admit(6):
            pass
        assert info.value.status == 429 and info.value.headers["Retry-After"]
        with worker.admit(5):  # exactly full is fine
            pass
    with worker.admit(21):  # alone, a request over the limit still runs
        pass


async def test_cancelled_items_are_skipped() -> None:
    embed = Scripted()
    limits = BatchLimits(max_size=8, max_tokens=4096, wait_s=0.05, max_queue=20)
    metrics = Metrics()
    w = BatchWorker("m", embed, limits=limits, metrics=metrics, executor=ThreadPoolExecutor(1))
    w.start()
    futures = [w.submit([[1]]), w.submit([[2], [4]]), w.submit([[3]])]
    futures[1].cancel()  # the caller went away while queued: both of its texts are dropped
    await asyncio.gather(futures[0], futures[2])
    await w.stop()
    assert embed.calls == [2]
    assert metrics.registry.get_sample_value("embedserver_dropped_total", {"model": "m"}) == 2


async def test_a_batch_whose_callers_all_left_while_waiting_for_the_thread_is_not_run() -> None:
    gate = threading.Event()
    embed = Scripted()

    def held(batch: list[TokenIds]) -> np.ndarray:
        gate.wait(timeout=10)
        return embed(batch)

    limits = BatchLimits(max_size=8, max_tokens=4096, wait_s=0.001, max_queue=20)
    metrics = Metrics()
    w = BatchWorker("m", held, limits=limits, metrics=metrics, executor=ThreadPoolExecutor(1))
    w.start()
    running = w.submit([[1]])
    await asyncio.sleep(0.1)  # the first batch holds the MLX thread
    waiting = w.submit([[2], [3]])
    await asyncio.sleep(0.1)  # the second is handed to the thread and waits behind it
    waiting.cancel()
    gate.set()
    await running
    await w.stop()
    assert embed.calls == [1]
    assert metrics.registry.get_sample_value("embedserver_dropped_total", {"model": "m"}) == 2


async def test_concurrent_submissions_share_forward_passes() -> None:
    embed = Scripted()
    limits = BatchLimits(max_size=64, max_tokens=100_000, wait_s=0.01, max_queue=1000)
    w = BatchWorker("m", embed, limits=limits, metrics=Metrics(), executor=ThreadPoolExecutor(1))
    w.start()

    results = await asyncio.gather(*(w.submit([[i + 1]]) for i in range(32)))
    await w.stop()
    assert [r.tolist()[0][1] for r in results] == [i + 1 for i in range(32)]
    assert len(embed.calls) < 32


async def test_queries_queued_with_passages_run_as_a_pass_of_each() -> None:
    """plan_batches' split through the worker: 16-token queries queued with 256-token passages become a pass
    of queries and a pass of passages (the runner's split_tokens), each text answered with its own vector."""
    embed = Scripted()
    limits = BatchLimits(max_size=64, max_tokens=100_000, wait_s=0.01, max_queue=1000)
    executor = ThreadPoolExecutor(1)
    w = BatchWorker("m", embed, limits=limits, metrics=Metrics(), executor=executor, split_tokens=64)
    gate = threading.Event()
    executor.submit(gate.wait)  # the MLX thread is busy while all of them queue
    w.start()
    queries = [w.submit([[k] * 16]) for k in range(1, 7)]
    passages = [w.submit([[k] * 256]) for k in range(7, 9)]
    await asyncio.sleep(0.05)
    gate.set()
    results = await asyncio.gather(*queries, *passages)
    await w.stop()
    assert [r.tolist() for r in results] == [[[16, k]] for k in range(1, 7)] + [[[256, 7]], [[256, 8]]]
    assert embed.calls == [6, 2]


async def test_a_small_request_takes_turns_with_a_large_one_in_passes_of_its_own() -> None:
    """A 2-token request behind a request of twenty 64-token texts is split from them (split_tokens), so
    their batches compete: a request waits from when it was queued or last had a text computed, and the small
    one runs in the pass after the large one's next, not after all five of the large one's."""
    release = threading.Event()

    class Held(Scripted):
        def __call__(self, batch: list[TokenIds]) -> np.ndarray:
            if not self.calls:
                release.wait(10)
            return super().__call__(batch)

    embed = Held()
    limits = BatchLimits(max_size=4, max_tokens=100_000, wait_s=0.001, max_queue=1000)
    w = BatchWorker(
        "m", embed, limits=limits, metrics=Metrics(), executor=ThreadPoolExecutor(1), split_tokens=16
    )
    w.start()
    try:
        large = w.submit([[1] * 64 for _ in range(20)])
        await asyncio.sleep(0.05)  # its first pass holds the MLX thread, its second is handed over behind it
        small = w.submit([[2, 2]])
        await asyncio.sleep(0.05)
        release.set()
        assert (await small).tolist() == [[2, 2]]
        assert (await large).shape == (20, 2)
        assert embed.calls == [4, 4, 1, 4, 4, 4]
    finally:
        release.set()
        await w.stop()


async def test_stop_fails_what_is_still_queued() -> None:
    def slow(batch: list[TokenIds]) -> np.ndarray:
        time.sleep(0.2)
        return np.ones((len(batch), 2), dtype=np.float32)

    limits = BatchLimits(max_size=1, max_tokens=4096, wait_s=0, max_queue=20)
    w = BatchWorker("m", slow, limits=limits, metrics=Metrics(), executor=ThreadPoolExecutor(1))
    w.start()
    futures = [w.submit([[i]]) for i in (1, 2, 3)]  # two go to the MLX thread, the third waits for a slot
    await asyncio.sleep(0.05)
    await w.stop()
    assert (await futures[0]).tolist() == [[1, 1]] and (await futures[1]).tolist() == [[1, 1]]
    with pytest.raises(Exception, match="unloaded"):
        await futures[2]


async def test_idle_worker_does_not_wait_for_a_batch_to_fill() -> None:
    limits = BatchLimits(max_size=64, max_tokens=4096, wait_s=5.0, max_queue=20)
    w = BatchWorker("m", Scripted(), limits=limits, metrics=Metrics(), executor=ThreadPoolExecutor(1))
    w.start()
    started = time.perf_counter()
    await w.submit([[1]])
    assert time.perf_counter() - started < 1.0  # not the 5 s BATCH_WAIT_MS
    await w.stop()


@pytest.mark.parametrize("rounds", [1, 3])
async def test_tokenize_rounds_gather_concurrent_requests(tiny_qwen3: Path, rounds: int) -> None:
    from embedserver.tokenization.batcher import TokenizeBatcher
    from embedserver.tokenization.tokenizer import TextTokenizer

    tokenizer = TextTokenizer(tiny_qwen3 / "tokenizer.json", end_token="<|endoftext|>")
    calls: list[int] = []
    original = tokenizer.encode_batch

    def counting(texts: Sequence[str]) -> list[list[int]]:
        calls.append(len(texts))
        return original(texts)

    tokenizer.encode_batch = counting  # type: ignore[method-assign]
    batcher = TokenizeBatcher(tokenizer, rounds=rounds)
    requests = [[f"text {i}", f"second {i}"] for i in range(20)]
    results = await asyncio.gather(*(batcher.encode(texts) for texts in requests))
    assert results == [original(texts) for texts in requests]  # each caller gets its own texts, in order
    assert sum(calls) == 40 and len(calls) < 20  # but in shared rounds


async def test_short_texts_of_an_idle_model_are_encoded_on_the_event_loop(tiny_qwen3: Path) -> None:
    """Where the model is idle, a short request's tokenization is on its critical path: no thread hand-off.
    A long request, a busy model, or a round already running keep the work on the tokenizer threads."""
    from embedserver.tokenization.batcher import INLINE_CHARS, TokenizeBatcher
    from embedserver.tokenization.tokenizer import TextTokenizer

    tokenizer = TextTokenizer(tiny_qwen3 / "tokenizer.json", end_token="<|endoftext|>")
    assert tokenizer.fast
    threads: list[str] = []
    original = tokenizer.encode_batch

    def recording(texts: Sequence[str]) -> list[list[int]]:
        threads.append(threading.current_thread().name)
        return original(texts)

    tokenizer.encode_batch = recording  # type: ignore[method-assign]
    batcher = TokenizeBatcher(tokenizer)
    loop_thread = threading.current_thread().name
    long_text = "word " * (INLINE_CHARS // 5 + 1)

    assert await batcher.encode(["a short query"], idle=True) == original(["a short query"])
    assert await batcher.encode([long_text], idle=True) == original([long_text])
    assert await batcher.encode(["a short query"]) == original(["a short query"])
    assert threads[0] == loop_thread and threads[1] != loop_thread and threads[2] != loop_thread

    threads.clear()  # a round in progress: an idle model's request joins the rounds, not the event loop
    results = await asyncio.gather(batcher.encode([long_text]), batcher.encode(["short"], idle=True))
    assert list(results) == [original([long_text]), original(["short"])]
    assert loop_thread not in threads


@pytest.mark.parametrize("rounds", [1, 3])
async def test_a_request_right_after_a_round_ends_is_tokenized(tiny_qwen3: Path, rounds: int) -> None:
    """A caller resumed by a finished round may ask again before that round's task is gone from the loop's
    books; it must start a new round, not wait for a round that already ended (it waited until some other
    request came: forever for a lone client)."""
    from embedserver.tokenization.batcher import TokenizeBatcher
    from embedserver.tokenization.tokenizer import TextTokenizer

    tokenizer = TextTokenizer(tiny_qwen3 / "tokenizer.json", end_token="<|endoftext|>")
    batcher = TokenizeBatcher(tokenizer, rounds=rounds)

    async def one_after_another() -> list[list[list[int]]]:
        return [await batcher.encode([f"one after another {i}"]) for i in range(20)]

    results = await asyncio.wait_for(one_after_another(), 10)
    assert results == [tokenizer.encode_batch([f"one after another {i}"]) for i in range(20)]


async def test_the_next_batch_fills_until_the_running_one_is_nearly_done() -> None:
    """Texts arriving while a forward pass runs all join the next batch (cut near the end of the running
    pass, here ~0.8 s in, or when it ends), instead of the first few forming a small batch 5 ms in and the
    rest waiting for a third."""
    release = threading.Event()

    class Slow(Scripted):
        def __call__(self, batch: list[TokenIds]) -> np.ndarray:
            if not self.calls:
                time.sleep(1.0)  # teaches the worker that a forward pass takes ~1 s
            elif batch[0][0] == 2:
                release.wait(10)  # the running pass lasts until every wave has arrived
            return super().__call__(batch)

    embed = Slow()
    limits = BatchLimits(max_size=64, max_tokens=4096, wait_s=0.005, max_queue=1000)
    w = BatchWorker("m", embed, limits=limits, metrics=Metrics(), executor=ThreadPoolExecutor(1))
    w.start()
    try:
        await w.submit([[1]])
        running = w.submit([[2]])
        waves = []
        for _ in range(3):
            await asyncio.sleep(0.02)
            waves.append(w.submit([[3]] * 10))
        release.set()
        await asyncio.gather(running, *waves)
        assert embed.calls == [1, 1, 30]
    finally:
        release.set()
        await w.stop()


@pytest.mark.parametrize(("bucketed", "expected"), [(False, [1, 40]), (True, [1, 32, 8])])
async def test_a_busy_worker_cuts_batches_to_bucket_sizes(bucketed: bool, expected: list[int]) -> None:
    """With bucketed batch sizes (GPUs), 40 texts would run as 48 rows, 8 of them filler: while the GPU is
    busy the worker runs 32 and keeps the other 8 for the next batch. Without buckets nothing is held back."""
    release = threading.Event()
    embed = HeldOn(2, release)
    limits = BatchLimits(max_size=64, max_tokens=4096, wait_s=0.005, max_queue=1000)
    w = BatchWorker(
        "m", embed, limits=limits, metrics=Metrics(), executor=ThreadPoolExecutor(1), bucketed_rows=bucketed
    )
    w.start()
    try:
        running = w.submit([[2]])
        await asyncio.sleep(0.05)
        queued = w.submit([[3, i] for i in range(40)])
        await asyncio.sleep(0.05)
        release.set()
        await running
        results = await queued
        assert embed.calls == expected
        assert [int(r[1]) for r in results] == [3] * 40  # every text answered
    finally:
        release.set()
        await w.stop()


async def test_the_bucket_cut_applies_to_the_batch_that_runs_after_a_split() -> None:
    """40 short texts and 8 long ones queued behind a pass: 48 rows is a bucket, so cutting before planning
    kept all 48, and the split then ran the 40 short ones as 48 rows with 8 of filler. The cut applies to the
    planned batch: 32 short texts run, the other 8 wait for a pass of their own, beside the long ones'."""
    release = threading.Event()
    embed = HeldOn(1, release)
    limits = BatchLimits(max_size=64, max_tokens=100_000, wait_s=0.005, max_queue=1000)
    w = BatchWorker(
        "m",
        embed,
        limits=limits,
        metrics=Metrics(),
        executor=ThreadPoolExecutor(1),
        bucketed_rows=True,
        split_tokens=16,
    )
    w.start()
    try:
        running = w.submit([[1]])
        await asyncio.sleep(0.05)
        short = w.submit([[10 + k, 0] for k in range(40)])
        long = w.submit([[3] * 64 for _ in range(8)])
        await asyncio.sleep(0.05)
        release.set()
        await running
        assert [int(r[1]) for r in await short] == [
            10 + k for k in range(40)
        ]  # each its own vector, in order
        assert (await long).shape == (8, 2)
        assert embed.calls[:2] == [1, 32]
        assert sorted(embed.calls[2:]) == [8, 8]
    finally:
        release.set()
        await w.stop()


@pytest.mark.parametrize(
    ("queued", "run"),
    [(1, 1), (3, 3), (13, 13), (17, 16), (23, 23), (40, 32), (99, 96), (120, 120), (130, 128), (250, 250)],
)
def test_rows_to_run_pads_a_little_or_cuts_to_the_bucket_below(queued: int, run: int) -> None:
    from embedserver.runtime.padding import rows_to_run

    assert rows_to_run(queued) == run


@pytest.mark.parametrize(("bucketed", "tokens", "padding"), [(False, 3 * 16, 0.0), (True, 4 * 16, 0.25)])
async def test_padding_metrics_count_filler_rows(bucketed: bool, tokens: int, padding: float) -> None:
    """Three 16-token texts run as 4 rows when the runner pads batch sizes to buckets: the fourth row is
    padding the device computes, so the padded-token and padding-share metrics include it."""
    metrics = Metrics()
    limits = BatchLimits(max_size=8, max_tokens=4096, wait_s=0.005, max_queue=100)
    w = BatchWorker(
        "m",
        Scripted(),
        limits=limits,
        metrics=metrics,
        executor=ThreadPoolExecutor(1),
        bucketed_rows=bucketed,
    )
    w.start()
    try:
        await w.submit([[5] * 16] * 3)
    finally:
        await w.stop()
    sample = metrics.registry.get_sample_value
    assert sample("embedserver_batch_tokens_sum", {"model": "m"}) == tokens
    assert sample("embedserver_padding_ratio_sum", {"model": "m"}) == pytest.approx(padding)
    assert sample("embedserver_padding_ratio_count", {"model": "m"}) == 1


async def test_the_next_batch_fills_for_as_long_as_the_running_shape_takes() -> None:
    """The batch after a slow, large pass keeps filling until shortly before that pass should end, judged by
    passes of its own shape: a moving average over all passes, dragged down by fast small ones, cut it after
    a fraction of that time (3 of the 10 texts below), and small and large batches then alternated."""

    class Timed(Scripted):
        def __call__(self, batch: list[TokenIds]) -> np.ndarray:
            time.sleep(0.6 if len(batch) == 8 else 0.005)
            return super().__call__(batch)

    embed = Timed()
    limits = BatchLimits(max_size=64, max_tokens=4096, wait_s=0.005, max_queue=1000)
    w = BatchWorker("m", embed, limits=limits, metrics=Metrics(), executor=ThreadPoolExecutor(1))
    w.start()
    try:
        await w.submit([[1] * 4] * 8)  # the 8 x 4 shape takes 0.6 s
        for _ in range(6):
            await w.submit([[2]])  # the latest passes took 5 ms
        running = w.submit([[3] * 4] * 8)
        await asyncio.sleep(0.05)
        arriving: list[asyncio.Future[np.ndarray]] = []
        for i in range(10):  # one text every 30 ms, all within the running pass's first 0.4 s
            arriving.append(w.submit([[4, i]]))
            await asyncio.sleep(0.03)
        await asyncio.gather(running, *arriving)
        assert embed.calls[-2:] == [8, 10]
    finally:
        await w.stop()


class Slow:
    """embed() stand-in that takes `seconds` per batch and records the first id of every row it computed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.computed: list[int] = []

    def __call__(self, batch: list[TokenIds]) -> np.ndarray:
        time.sleep(self.seconds)
        self.computed.extend(seq[0] for seq in batch)
        return np.ones((len(batch), 2), dtype=np.float32)


def _started(embed: Slow, limits: BatchLimits, metrics: Metrics | None = None) -> BatchWorker:
    metrics = metrics or Metrics()
    worker = BatchWorker("m", embed, limits=limits, metrics=metrics, executor=ThreadPoolExecutor(1))
    worker.start()
    return worker


async def test_a_large_request_shares_batches_with_small_ones_that_arrive_behind_it() -> None:
    """Batches take one text from each waiting request in turn: 3 texts arriving behind 400 queued ones are
    computed in the next batches, not after all 400."""
    embed = Slow(0.01)
    worker = _started(embed, BatchLimits(max_size=8, max_tokens=4096, wait_s=0.001, max_queue=1000))
    try:
        large = worker.submit([[1000 + i, 5] for i in range(400)])
        await asyncio.sleep(0.03)  # the first batches of the large request are running
        small = worker.submit([[1, 5], [2, 5], [3, 5]])
        await small
        done_of_large = sum(first >= 1000 for first in embed.computed)
        assert done_of_large < 100, f"the small request waited for {done_of_large} of the large one's texts"
        assert len(await large) == 400
        assert sorted(embed.computed) == [1, 2, 3, *range(1000, 1400)]  # each text once
    finally:
        await worker.stop()


async def test_a_large_request_that_progresses_is_not_cut_by_the_wait_bound() -> None:
    """The bound is on a request's wait for its next text, not on its size: 8 texts in batches of 2 take four
    times the bound and are all computed, since each batch computes some of them."""
    embed = Slow(0.2)
    limits = BatchLimits(max_size=2, max_tokens=4096, wait_s=0.001, max_queue=1000, max_wait_s=0.3)
    worker = _started(embed, limits)
    try:
        vectors = await worker.submit([[i, 5] for i in range(1, 9)])
        assert len(vectors) == 8 and sorted(embed.computed) == list(range(1, 9))
    finally:
        await worker.stop()


async def test_admission_counts_what_the_work_in_progress_adds_to_a_new_request() -> None:
    """At 10 texts a second and a 1 s bound: each request in progress holds back a new request of k texts by
    up to k of its own texts, and the new request's own texts are not counted."""
    limits = BatchLimits(max_size=8, max_tokens=4096, wait_s=0.001, max_queue=1000, max_wait_s=1.0)
    worker = _started(Slow(0.0), limits)
    worker.admission.rate = 10.0
    try:
        with worker.admit(1), worker.admit(40):  # a bulk request behind a query: held back by one text
            with worker.admit(1):  # a query behind both: by one text of each
                pass
            with pytest.raises(Overloaded), worker.admit(40):  # another bulk request: by 41 texts
                pass
        with ExitStack() as held:  # single-text requests: the whole backlog
            for _ in range(10):
                held.enter_context(worker.admit(1))
            held.enter_context(worker.admit(1))  # held back by 10 texts: 1.0 s, not past the bound
            with pytest.raises(Overloaded) as refused, worker.admit(1):  # by 11: 1.1 s
                pass
        assert refused.value.headers["Retry-After"] == "2"
    finally:
        await worker.stop()


async def test_a_query_behind_a_bulk_request_is_admitted_and_answered_in_turn() -> None:
    """Admission estimates what the work in progress adds to a new request's wait, as batches take texts one
    from each request in turn: behind a request of 40 texts (2 s of passes, past the 1 s bound) a one-text
    query is admitted and answered in the next passes, while another 40-text request, held back by all 40,
    is refused at once."""
    embed = Slow(0.1)
    limits = BatchLimits(max_size=2, max_tokens=4096, wait_s=0.001, max_queue=1000, max_wait_s=1.0)
    worker = _started(embed, limits)
    try:
        with worker.admit(40):
            bulk = worker.submit([[1, k] for k in range(40)])
            while worker.admission.rate == 0:  # passes back to back: the rate is measured
                await asyncio.sleep(0.05)
            asked = time.perf_counter()
            with worker.admit(1):
                await worker.submit([[2, 5]])
            assert time.perf_counter() - asked < 0.6  # a pass or two, not the bulk request's 2 s
            assert not bulk.done()
            with pytest.raises(Overloaded) as refused, worker.admit(40):
                pass
            assert refused.value.status == 429 and "MAX_QUEUE_WAIT_S" in refused.value.message
            await bulk
        assert embed.computed.count(1) == 40 and embed.computed.count(2) == 1
    finally:
        await worker.stop()


class PerToken(Slow):
    """Slow, but a pass takes `seconds` per padded token (rows x the bucketed longest length), as on a CPU."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.passes: list[float] = []  # each pass's seconds

    def __call__(self, batch: list[TokenIds]) -> np.ndarray:
        self.passes.append(self.seconds * len(batch) * bucket_length(max(map(len, batch))))
        time.sleep(self.passes[-1])
        self.computed.extend(seq[0] for seq in batch)
        return np.ones((len(batch), 2), dtype=np.float32)


async def test_passes_are_cut_to_half_the_wait_bound_so_a_query_behind_a_bulk_request_is_answered() -> None:
    """Where passes are slow (a CPU), a pass holds what the model computes in half of MAX_QUEUE_WAIT_S at its
    recent speed: a query arriving behind 40 texts (2.5 s of work, one pass by the token limit) is answered
    within the 1 s bound, not failed with queue_timeout behind one long pass; every text is computed."""
    embed, metrics = PerToken(0.001), Metrics()  # 64 ms a 64-token text
    limits = BatchLimits(max_size=256, max_tokens=4096, wait_s=0.001, max_queue=1000, max_wait_s=1.0)
    worker = _started(embed, limits, metrics)

    def limit() -> float | None:  # read at scrape time
        return metrics.registry.get_sample_value("embedserver_pass_tokens_limit", {"model": "m"})

    try:
        assert limit() == FIRST_PASS_TOKENS  # before any pass was timed
        bulk = worker.submit([[1] + [0] * 63 for _ in range(40)])
        await asyncio.sleep(0.3)
        asked = time.perf_counter()
        query = await worker.submit([[2, 5]])
        assert len(query) == 1 and time.perf_counter() - asked < 1.0
        assert len(await bulk) == 40 and embed.computed.count(1) == 40
        assert max(embed.passes) <= 0.55  # half the bound, and the timing's slack
        assert 400 <= (limit() or 0) <= 600  # ~1,000 tokens a second for half a second
    finally:
        await worker.stop()


class _LateStart(ThreadPoolExecutor):
    """One thread that begins each job `seconds` after taking it."""

    def __init__(self, seconds: float) -> None:
        super().__init__(1)
        self.seconds = seconds

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        def late():  # type: ignore[no-untyped-def]
            time.sleep(self.seconds)
            return fn(*args, **kwargs)

        return super().submit(late)


async def test_a_query_goes_before_the_next_pass_of_a_request_already_in_one() -> None:
    """Of the batches planned at once, one holding a request with no text in a pass runs before one of a
    request with a text in the running pass: a query arriving during a bulk request's pass runs next, though
    the bulk request's last text was computed before the query came (by that alone it waited longer). And
    the next batch is cut late in the running pass, also when the event loop hears of the last pass's end
    before the MLX thread begins the one handed over (judged by the last pass, it was cut at once)."""
    embed = PerToken(0.002)  # a bulk pass of 4 x 64 tokens: 0.51 s; the query's: 0.03 s
    limits = BatchLimits(max_size=256, max_tokens=256, wait_s=0.001, max_queue=1000)
    thread = _LateStart(0.05)  # the loop hears of a pass's end 50 ms before the thread begins the next
    worker = BatchWorker("m", embed, limits=limits, metrics=Metrics(), executor=thread, split_tokens=16)
    worker.start()
    try:
        bulk = worker.submit([[1] + [0] * 63 for _ in range(40)])
        await asyncio.sleep(0.7)  # the second bulk pass runs
        asked = time.perf_counter()
        await worker.submit([[2, 5]])
        assert time.perf_counter() - asked < 0.75  # the rest of that pass and its own, not a third pass too
        await bulk
    finally:
        await worker.stop()


@pytest.mark.parametrize("turns", range(4))
async def test_stop_ends_the_worker_when_a_wakeup_meets_the_cancellation(turns: int) -> None:
    """stop() cancels the worker while it waits for the next batch to fill; a wakeup (a text arriving, a pass
    ending) in the same turns of the loop must not swallow the cancellation, or stop() waits forever."""
    release = threading.Event()
    worker = BatchWorker(
        "m",
        HeldOn(1, release),
        limits=BatchLimits(max_size=8, max_tokens=4096, wait_s=5.0, max_queue=20),
        metrics=Metrics(),
        executor=ThreadPoolExecutor(1),
    )
    worker.start()
    held = worker.submit([[1, 1]])
    await asyncio.sleep(0.05)  # the first pass holds the thread
    filling = worker.submit([[2, 2]])
    await asyncio.sleep(0.05)  # the worker lets the next batch fill (BATCH_WAIT_MS 5 s here)
    joining = worker.submit([[3, 3]])  # wakes it
    for _ in range(turns):
        await asyncio.sleep(0)
    assert worker._task is not None
    worker._task.cancel()
    release.set()
    async with asyncio.timeout(5):
        await worker.stop()
    assert (await held).tolist() == [[2, 1]]
    for queued in (filling, joining):
        with pytest.raises(ModelUnavailable):
            await queued


def test_pass_budget_follows_the_measured_speed_within_its_limits() -> None:
    budget = PassBudget(0.5, ceiling=4096)
    assert budget.tokens() == FIRST_PASS_TOKENS  # before any pass was timed
    budget.observe(256, 0.256)  # 1,000 tokens a second
    assert budget.tokens() == 500
    for _ in range(20):
        budget.observe(10_000, 1.0)
    assert budget.tokens() == 4096  # never past MAX_BATCH_TOKENS
    cpu = PassBudget(0.5, ceiling=4096)
    cpu.observe(512, 2.56)  # 200 tokens a second in a full pass
    cpu.observe(16, 0.26)  # a lone query's pass, mostly the fixed cost
    assert 80 <= cpu.tokens() <= 100  # the speed of the passes' tokens, not of the passes (~130 tokens/s)
    assert PassBudget(0.0, ceiling=4096).tokens() == 4096  # no wait bound: no time budget
    slow = PassBudget(0.5, ceiling=4096)
    slow.observe(16, 8.0)
    assert slow.tokens() == 1  # plan_batches still gives a text a pass of its own


async def test_tokens_are_bounded_per_request_and_per_model() -> None:
    from embedserver.errors import TooManyTokens

    embed = Slow(0.2)
    limits = BatchLimits(
        max_size=8,
        max_tokens=4096,
        wait_s=0.001,
        max_queue=1000,
        max_request_tokens=100,
        max_queue_tokens=150,
    )
    worker = _started(embed, limits)
    try:
        with pytest.raises(TooManyTokens) as too_many:
            worker.submit([[1] * 60, [2] * 41])  # 101 tokens in one request
        assert too_many.value.status == 413 and "MAX_REQUEST_TOKENS" in too_many.value.message
        first = worker.submit([[1] * 100])  # alone: taken whatever the budget
        with pytest.raises(Overloaded) as full:
            worker.submit([[2] * 60])  # 100 + 60 tokens in progress > 150
        assert "MAX_QUEUE_TOKENS" in full.value.message
        fits = worker.submit([[3] * 50])
        await asyncio.gather(first, fits)
        after = worker.submit([[4] * 100])  # the budget is free again once the work is done
        await after
        assert sorted(embed.computed) == [1, 3, 4]
    finally:
        await worker.stop()


async def test_texts_that_wait_past_the_bound_fail_with_queue_timeout_and_are_never_computed() -> None:
    """Admission estimates the wait; when the machine turns out slower (here: a 0.5 s batch), texts still
    waiting after MAX_QUEUE_WAIT_S get 429 queue_timeout instead of an answer arbitrarily late."""
    embed = Slow(0.5)
    metrics = Metrics()
    limits = BatchLimits(max_size=2, max_tokens=4096, wait_s=0.001, max_queue=1000, max_wait_s=0.3)
    worker = _started(embed, limits, metrics)
    try:
        began = time.perf_counter()
        futures = [worker.submit([[i, 5]]) for i in range(1, 9)]  # 8 requests, 4 batches of 0.5 s
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        late = [o for o in outcomes if isinstance(o, Overloaded)]
        assert late and all(o.code == "queue_timeout" and o.status == 429 for o in late)
        assert time.perf_counter() - began < 1.6  # not the 2 s that computing every text would take
        assert len(embed.computed) + len(late) == 8 and len(embed.computed) <= 4
        assert metrics.expired.labels("m")._value.get() == len(late)
    finally:
        await worker.stop()


def _one_text_passes(seconds: float) -> tuple[Slow, Metrics, BatchWorker]:
    """A started worker whose passes take one text each, `seconds` a pass, with the wait bound at 0.3 s."""
    embed, metrics = Slow(seconds), Metrics()
    limits = BatchLimits(max_size=1, max_tokens=4096, wait_s=0.001, max_queue=1000, max_wait_s=0.3)
    return embed, metrics, _started(embed, limits, metrics)


async def test_a_request_past_the_bound_fails_at_the_bound_not_when_a_long_pass_ends() -> None:
    """A cut waits for the MLX thread: behind a 3 s pass (a real model on CPU over a long text), a request
    queued past MAX_QUEUE_WAIT_S gets its 429 about the bound after it was queued, not when the pass ends;
    the passes already handed over still run."""
    embed, metrics, worker = _one_text_passes(3.0)
    try:
        running = worker.submit([[1, 5]])
        handed = worker.submit([[2, 5]])  # the second hand-off: runs once the first pass ends
        await asyncio.sleep(0.05)
        queued = time.perf_counter()
        with pytest.raises(Overloaded) as failed:
            await worker.submit([[3, 5]])
        assert failed.value.code == "queue_timeout" and failed.value.status == 429
        assert time.perf_counter() - queued < 1.5  # the bound and a quarter of it, not the 3 s pass
        assert metrics.expired.labels("m")._value.get() == 1
        assert worker.waiting() == 0
        await asyncio.gather(running, handed)
        assert sorted(embed.computed) == [1, 2]
        assert worker._waiting.tokens == 0
    finally:
        await worker.stop()


async def test_a_request_with_texts_in_a_long_pass_is_not_failed_while_it_runs() -> None:
    """A request whose first text is in a pass longer than the bound progresses: its other texts wait
    behind that pass without failing, and all are computed."""
    embed = Slow(1.0)
    limits = BatchLimits(max_size=1, max_tokens=4096, wait_s=0.001, max_queue=1000, max_wait_s=0.3)
    worker = _started(embed, limits)
    try:
        vectors = await worker.submit([[1, 5], [2, 5], [3, 5]])
        assert len(vectors) == 3 and sorted(embed.computed) == [1, 2, 3]
    finally:
        await worker.stop()


async def test_a_request_that_expires_fails_whole_and_none_of_its_queued_texts_run() -> None:
    """When a request's wait passes the bound, it fails once with queue_timeout, and every text it still had
    queued counts as expired and is never computed (not only those that reached a batch)."""
    embed, metrics, worker = _one_text_passes(0.5)
    try:
        first = worker.submit([[1, 5]])
        second = worker.submit([[2, 5]])  # both hand-offs taken: the third request waits past the bound
        late = worker.submit([[3, 5], [4, 5], [5, 5]])
        outcomes = await asyncio.gather(first, second, late, return_exceptions=True)
        assert isinstance(outcomes[2], Overloaded) and outcomes[2].code == "queue_timeout"
        assert sorted(embed.computed) == [1, 2]
        assert metrics.expired.labels("m")._value.get() == 3
        assert worker.waiting() == 0
        await worker.submit([[6] * 10])  # nothing of the expired request holds the token budget
        assert worker._waiting.tokens == 0
    finally:
        await worker.stop()
