"""Dynamic micro-batching: one worker per model turns queued texts into padded batches.

Handlers submit a request's token ids; the worker queues one `WorkItem` per text, grouped by request, and
answers with one future per request that resolves to all of its vectors, stacked in order, when its last text
is computed (one future and one callback per request, not per text: what the engine process spends per request
is what caps short-text throughput). Batches take texts from the waiting requests in turn (`WaitingRequests`,
waiting.py). The worker wakes on the first item. When the MLX thread is idle it cuts a batch at once (waiting
would only add latency); while a batch runs, the next one keeps filling until shortly before the running one
is expected to end (from recent passes of its padded shape; at least BATCH_WAIT_MS), or until it is full.
It takes what waits (dropping the texts whose caller is gone, failing with 429 queue_timeout the requests
past MAX_QUEUE_WAIT_S: waiting.py), sorts by length and cuts batches by count, by padded-token budget
(MAX_BATCH_TOKENS, and where passes are slow what the model computes in half of MAX_QUEUE_WAIT_S:
`PassBudget`), and where padding short texts to a much longer one would cost more than another pass
(`plan_batches`, a pure function). Forward passes run on the MLX thread; up to two batches are handed to it at
once, so the next one is ready the moment the current one ends. On CUDA passes overlap instead
(`_run_overlapped`): the MLX thread only launches them and a collector thread waits for each.

Why the late cut: cut early, the next batch held only what arrived in its first milliseconds and then
waited behind the running one while everything else queued for the batch after; under steady load batches
alternated small and large, and small batches use the GPU poorly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from functools import partial

import numpy as np

from embedserver.batching.admission import Admission
from embedserver.batching.launched import LaunchedPass, LaunchFn, RemotePasses, non_finite_rows
from embedserver.batching.limits import BatchLimits
from embedserver.batching.pass_budget import PassBudget
from embedserver.batching.planning import plan_batches
from embedserver.batching.queued import QueuedRequest, WorkItem, deliver_pass, turn_order
from embedserver.batching.waiting import WaitingRequests
from embedserver.errors import InferenceError, ModelUnavailable, Overloaded, TooManyTokens
from embedserver.metrics import Metrics, observe_many
from embedserver.runtime.padding import padded_shape, rows_to_run
from embedserver.tokenization.token_ids import TokenIds
from embedserver.tuning.threads import named_executor

log = logging.getLogger(__name__)

# Overlapped passes (GPUs): at most this many launched and not yet answered. Two let the device compute one
# while the host queues the next; a third would only wait longer for the device, holding its batch's texts
# back from joining a later, fuller one.
_OVERLAPPED = 2

# The next batch is cut this share of a typical forward pass before the running one should end: enough for
# the event loop to plan it and hand it over while the MLX thread is still busy.
_CUT_AHEAD = 0.2

# A pass is cut to what the model computes in this share of MAX_QUEUE_WAIT_S (pass_budget.py). A request then
# waits for the rest of the running pass before its own (`turn_order` puts it ahead of requests with a text in
# a pass), and for the next pass too when it came after that one was cut (the running pass's last _CUT_AHEAD):
# at most 0.6 of the bound. Binds only where passes are slow (CPUs, large models on small GPUs).
_PASS_SHARE_OF_WAIT = 0.5

EmbedFn = Callable[[list[TokenIds]], np.ndarray]


class BatchWorker:
    def __init__(
        self,
        model: str,
        embed: EmbedFn | None,
        *,
        limits: BatchLimits,
        metrics: Metrics,
        executor: Executor,
        bucketed_rows: bool = False,
        launch: LaunchFn | None = None,
        passes: RemotePasses | None = None,
        split_tokens: int = 0,
    ) -> None:
        self.model = model
        # Padding worth one more pass (plan_batches): the runner's, which follows from the device.
        self._split_tokens = split_tokens
        # GPUs: passes are overlapped (_run_overlapped), `launch` queueing one without waiting for it, and
        # a thread of the worker's own waiting for each.
        self._launch = launch
        self._collector = named_executor("collect", 1) if launch is not None else None
        # MODEL_PROCESS: the model runs in a process of its own; passes overlap there, driven from this loop.
        self._passes = passes
        # The runner pads batch sizes to buckets (GPUs): while busy, cut batches to bucket sizes (rows_to_run).
        self._bucketed_rows = bucketed_rows
        self._embed = embed
        self._limits = limits
        self._metrics = metrics
        self._series = metrics.for_model(model)
        self._executor = executor
        self._waiting = WaitingRequests(model, limits, self._series)
        self._wakeup = asyncio.Event()
        self._handoffs = asyncio.Semaphore(2)
        self._running: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self.admission = Admission(model, limits, self._series.rejected)
        self._planned: list[list[WorkItem]] = []  # cut but not yet handed to the MLX thread
        # Overlapped passes handed to the MLX thread and not yet answered, and when the last collected ended.
        self._launched: list[LaunchedPass] = []
        self._device_end = 0.0
        self._in_executor = 0  # batches handed to the MLX thread and not yet back
        self._forward_started = 0.0  # when the MLX thread began its current (or last) forward pass
        self._forward_shape = (0, 0)  # that pass's padded (rows, length)
        self._forward_ended = 0.0  # when the MLX thread ended its last forward pass
        self._handed_shape = (0, 0)  # the padded shape of the batch last handed to the MLX thread
        self._forward_s = 0.0  # recent forward-pass duration (moving average)
        # Recent duration per padded shape: on a GPU a 128-row pass takes several times a 16-row one.
        self._shape_s: dict[tuple[int, int], float] = {}
        self._budget = PassBudget(limits.max_wait_s * _PASS_SHARE_OF_WAIT, limits.max_tokens)
        self.failure: str | None = None
        self.on_death: Callable[[], None] | None = None  # the registry's restart hook

    # --- handler side -------------------------------------------------------------------------------------
    def admit(self, texts: int) -> AbstractContextManager[None]:
        """Hold `texts` places in this model's backlog while the block runs, or 429 (`Admission.reserve`)."""
        return self.admission.admit(texts)

    def reserve(self, texts: int) -> None:
        self.admission.reserve(texts)

    def release(self, texts: int) -> None:
        self.admission.release(texts)

    def submit(self, sequences: Sequence[TokenIds]) -> asyncio.Future[np.ndarray]:
        """Queue one request's sequences (admitted through `admit`, at least one); the future resolves to their
        pooled vectors, one row per sequence in order, and cancelling it drops the texts not yet computed.
        Refused past the token limits: 413 for the request alone, 429 for a model with enough waiting."""
        if not sequences:
            raise ValueError("a request to compute has at least one sequence")
        if self._task is None or self._task.done():
            raise ModelUnavailable(f"model {self.model} is not serving: {self.failure or 'stopped'}")
        tokens = sum(map(len, sequences))
        limits = self._limits
        if tokens > limits.max_request_tokens:
            raise TooManyTokens(
                f"the request has {tokens} tokens to compute; the limit is {limits.max_request_tokens} "
                "(MAX_REQUEST_TOKENS): split it"
            )
        held = self._waiting.tokens
        if held and held + tokens > limits.max_queue_tokens:
            self._series.rejected.inc(len(sequences))
            raise Overloaded(
                f"model {self.model} has {held} tokens in progress (MAX_QUEUE_TOKENS "
                f"{limits.max_queue_tokens}); retry later",
                headers={"Retry-After": "1"},
            )
        request = QueuedRequest(sequences, asyncio.get_running_loop().create_future())
        self._waiting.add(request, tokens)
        self._wakeup.set()
        return request.future

    async def compute(self, sequences: Sequence[TokenIds]) -> np.ndarray:
        """`submit`, then the vectors stacked in order; a caller that leaves early (cancelled) cancels the
        future, which drops the sequences not yet computed."""
        return await self.submit(sequences)

    def waiting(self) -> int:
        """Texts waiting for the model: queued, or in batches cut and not yet handed to the MLX thread."""
        return self._waiting.texts + sum(map(len, self._planned))

    @property
    def busy(self) -> bool:
        return bool(self._waiting.texts) or bool(self._running) or any(self._planned) or bool(self._launched)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    # --- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        overlapped = self._launch is not None or self._passes is not None
        run = self._run_overlapped() if overlapped else self._run()
        self._task = asyncio.create_task(run, name=f"batcher-{self.model}")
        # Read when /metrics is scraped: texts queued, and texts cut into batches not yet handed to the MLX thread.
        self._series.queue_depth.set_function(self.waiting)
        self._series.pass_tokens_limit.set_function(self._budget.tokens)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._running, return_exceptions=True)
        self._fail_queued(ModelUnavailable(f"model {self.model} was unloaded"))
        if self._collector is not None:
            self._collector.shutdown(wait=False)  # a pass it still waits for ends with the device's work

    # --- worker side --------------------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            while True:
                while not self._waiting.texts:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                # Hold a hand-off before cutting the batch: texts arriving while both are taken still join.
                await self._handoffs.acquire()
                if self._running:
                    # The MLX thread is busy anyway: waiting for the batch to fill costs no latency.
                    await self._fill()
                first = self._cut(busy=bool(self._running))
                if not first:  # everything taken had been left or had expired
                    self._handoffs.release()
                    continue
                task = asyncio.create_task(self._run_batch(first))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in the worker itself: fail what waits rather than hang it
            self._died(exc)
            raise

    def _died(self, exc: Exception) -> None:
        log.exception("batch worker for %s died", self.model)
        self.failure = f"worker died: {exc!r}"
        self._fail_queued(ModelUnavailable(f"model {self.model} worker failed; retry"))
        if self.on_death is not None:
            self.on_death()

    def _cut(self, *, busy: bool) -> list[WorkItem]:
        """The next batch from the queue (empty when everything taken had been left or had expired). While the
        device is `busy`, the batch is cut to a bucketed row count (rows_to_run) and the rest waits for the
        next."""
        # Items taken off the queue stay reachable until dispatched, so a crash or stop() fails them instead
        # of leaving their callers waiting forever.
        window = self._waiting.take()
        self._planned = [window]
        limits = self._limits
        batches = plan_batches(
            window,
            max_size=limits.max_size,
            max_tokens=self._budget.tokens(),
            split_tokens=self._split_tokens,
        )
        self._planned = []
        if not batches:
            return []
        # One batch at a time: the one holding the longest-waiting text (so no text waits forever behind
        # shorter ones), after any holding a request with no text in a pass (`turn_order`); the rest go back
        # to their requests and are planned again with whatever arrives meanwhile, so a request arriving now
        # joins the next batch, not the one after a large request's last. A request waits from when it was
        # queued or last had a text computed: a large request whose texts form a batch of their own (longer
        # texts than a small request's, or past the budget) takes turns with the small ones that arrived
        # behind it instead of going first until it is done.
        first = batches[0] if len(batches) == 1 else min(batches, key=turn_order)
        back = [item for batch in batches if batch is not first for item in batch]
        # While the device is busy, a batch is cut to a bucketed row count (after planning, so the cut is of
        # the batch that runs); the texts held back are those the window took last.
        run = rows_to_run(len(first)) if self._bucketed_rows and busy else len(first)
        if back or run < len(first):
            position = {id(item): k for k, item in enumerate(window)}
            if run < len(first):
                first.sort(key=lambda item: position[id(item)])
                first, held = first[:run], first[run:]
                back += held
            # Back in the window's order, so each request's texts and the requests' turns stay as they were.
            self._waiting.put_back(sorted(back, key=lambda item: position[id(item)]))
        for item in first:
            item.request.passes += 1
        return first

    async def _run_overlapped(self) -> None:
        """The worker on GPUs, where queueing a short pass's kernels is most of its time. The MLX thread only
        launches passes; another thread (`_collector`) waits for each and reads its vectors, so the device
        computes one pass while the MLX thread queues the next, and a pass is answered as soon as the device
        is done with it. A batch is cut when the MLX thread is ready to launch it, so it holds what arrived
        while the previous one was launched (no pass times judge the cut); at most `_OVERLAPPED` passes are in
        flight (MLX itself holds the host back once it is ten command buffers ahead of the device, as long
        passes are). A pass alone (one request's texts, nothing waits, nothing in flight) runs whole on the MLX
        thread (`_alone`). With a model in a process of its own (`passes`, MODEL_PROCESS) that process
        launches and collects them, and this loop awaits its answers: no thread of this process takes part."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                while not self._waiting.texts or len(self._launched) >= _OVERLAPPED:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                batch = self._cut(busy=bool(self._launched))
                if not batch:  # everything taken had been left or had expired
                    continue
                launched = LaunchedPass(
                    batch, padded_shape([item.ids for item in batch], bucket_rows=self._bucketed_rows)
                )
                self._launched.append(launched)
                if self._passes is not None:
                    await self._passes.launch(launched, self._alone)
                else:
                    assert self._launch is not None and self._embed is not None
                    await loop.run_in_executor(
                        self._executor, launched.launch, self._launch, self._embed, self._alone
                    )
                if launched.collected:  # run whole (alone), not run (its callers left), or failed to launch
                    self._answer(launched)
                    continue
                if self._passes is not None:
                    collecting = self._passes.collected(launched)
                else:
                    collecting = loop.run_in_executor(self._collector, self._collect, launched)
                collecting.add_done_callback(partial(self._collected, launched))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in the worker itself: fail what waits rather than hang it
            self._died(exc)
            raise

    def _alone(self) -> bool:
        """Read on the MLX thread as a pass launches: its texts are one request's, no text waits to follow it
        and no other pass is in flight (a benign race: at worst one pass runs whole that could have
        overlapped, or the reverse).

        One request's, because under load the test of an empty queue alone held: a cut takes every text that
        waits, so each pass was launched with nothing behind it and ran whole, the clients it answered sent
        the next batch while it ran, and the worker never overlapped again (H200, 128-token texts at 256
        clients: 3,030 req/s, passes padded to their bucket, against 4,139 overlapped on the same host). A
        client alone sends one request at a time, however many texts it holds; a pass of many requests is
        load, with more behind it."""
        if self._waiting.texts or len(self._launched) != 1:
            return False
        requests = self._launched[0].requests
        return all(request is requests[0] for request in requests)

    def _collect(self, launched: LaunchedPass) -> None:
        """On the collector thread, one pass at a time in launch order."""
        self._device_end = launched.collect(self._device_end)

    def _collected(self, launched: LaunchedPass, collecting: asyncio.Future[None]) -> None:
        """The collector thread is done with a pass: answer it. Should the collection itself have raised
        (not the pass: `LaunchedPass.collect` keeps that as the outcome), the pass failed, and its texts are
        retried alone like any failed pass's, never left waiting."""
        error = collecting.exception()
        if error is not None and not launched.collected:
            launched.error, launched.collected = error, True  # type: ignore[assignment]
        self._answer(launched)

    def _answer(self, done: LaunchedPass) -> None:
        """An overlapped pass's outcome to its requests (on the event loop). A pass failed by stop() or the
        worker's death meanwhile is answered already."""
        if done not in self._launched:
            return
        self._launched.remove(done)
        self._wakeup.set()  # a place for the next pass
        batch = done.batch
        if done.abandoned:
            self._series.dropped.inc(len(batch))
            self._pass_over(batch)
            return
        error = done.error
        if error is None:
            self._observe_pass(done.shape, done.seconds, len(batch))
            real = sum(len(item.ids) for item in batch)
            record = partial(self._record_pass, done.requests, done.shape, real, done.started, done.seconds)
            if not done.bad:
                assert done.vectors is not None
                deliver_pass(batch, done.vectors, time.perf_counter())
                asyncio.get_running_loop().call_soon(record)  # after the callers resume
                self._pass_over(batch)
                return
            record()
            error = self._non_finite(done.bad)
        else:
            self._record_waits(done.started, done.requests)  # its texts waited for the model all the same
        task = asyncio.create_task(self._retry_alone(batch, error))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _fill(self) -> None:
        """While the MLX thread is busy, let texts join the next batch until shortly before the running forward
        pass should end (at least wait_s), or until the batch is full, or the thread is free."""
        started = time.perf_counter()
        # The running pass's own shape: one moving average over all shapes, dragged down by small batches, cut
        # the batch after a large one early; it then ran small, and small and large batches alternated.
        begun, shape = self._forward_started, self._forward_shape
        if begun < self._forward_ended:
            # The thread is between passes, the one handed over not yet begun (the loop often hears of a
            # pass's end before the thread starts the next): judged by the last pass, the batch would be cut
            # at once, and what arrives during the next pass would wait for the one after it.
            begun, shape = started, self._handed_shape
        expected = self._shape_s.get(shape, self._forward_s)
        expected_end = begun + expected * (1 - _CUT_AHEAD)
        deadline = max(started + self._limits.wait_s, expected_end)
        while self._waiting.texts < self._limits.max_size and self._in_executor:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._wakeup.clear()
            # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that lands as the event is set
            # (it returns the result instead), and stop() then waited forever for this task.
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                break

    def _pass_over(self, batch: Sequence[WorkItem]) -> None:
        """A batch cut by `_cut` is done with (computed, abandoned, failed and its texts retried alone, or
        failed by stop()): its requests have that many texts fewer in a pass (`turn_order`, the waiting
        requests' sweep), and its tokens free the budget."""
        for item in batch:
            item.request.passes -= 1
        self._waiting.settle(batch)

    async def _run_batch(self, batch: list[WorkItem]) -> None:
        taken = batch
        try:
            # Waiting for a hand-off, some may have been left, or waited too long.
            live = [item for item in batch if not item.request.future.done()]
            if len(live) < len(batch):
                self._series.dropped.inc(len(batch) - len(live))
            batch, _ = self._waiting.expire(live)  # the expired are settled with the rest of `taken` below
            if not batch:
                return
            loop = asyncio.get_running_loop()
            try:
                vectors, record = await self._forward(batch)
            except _Abandoned:
                self._series.dropped.inc(len(batch))
                return
            except Exception as exc:
                await self._retry_alone(batch, exc, settle=False)
                return
            deliver_pass(batch, vectors, time.perf_counter())
            # Metrics after the callers resume (they were scheduled first): a lone request does not wait for them.
            loop.call_soon(record)
        finally:
            self._pass_over(taken)  # computed, failed, left or expired: every item of the batch is done with
            self._handoffs.release()

    async def _retry_alone(self, batch: list[WorkItem], exc: Exception, *, settle: bool = True) -> None:
        """A failed batch's texts, each in a pass of its own, so one bad input fails only its own request
        (`settle`: the batch is done with afterwards, `_pass_over`, as an overlapped pass's is)."""
        self._series.batch_failures.inc()
        log.warning("batch of %d for %s failed (%r)", len(batch), self.model, exc)
        loop = asyncio.get_running_loop()
        try:
            if len(batch) == 1:
                batch[0].request.fail(exc)
                return
            for item in batch:
                if item.request.future.done():
                    continue  # failed by an earlier text of the same request
                try:
                    vectors, record = await self._forward([item])
                    deliver_pass([item], vectors, time.perf_counter())
                    loop.call_soon(record)
                except Exception as item_exc:
                    item.request.fail(item_exc)
        finally:
            if settle:
                self._pass_over(batch)

    async def _forward(self, batch: list[WorkItem]) -> tuple[np.ndarray, Callable[[], None]]:
        """The pooled vectors, and a function that records the pass in the metrics (run it later)."""
        loop = asyncio.get_running_loop()
        sequences = [item.ids for item in batch]
        requests = [item.request for item in batch]
        shape = self._handed_shape = padded_shape(sequences, bucket_rows=self._bucketed_rows)
        self._in_executor += 1
        try:
            if self._passes is not None:
                vectors, started, seconds, bad = await self._remote_pass(sequences, requests)
            else:
                vectors, started, seconds, bad = await loop.run_in_executor(
                    self._executor, self._timed_embed, sequences, requests, shape
                )
        except _FailedPass as failed:  # its texts waited for the model all the same
            self._record_waits(failed.started, requests)
            raise failed.cause from None
        finally:
            self._in_executor -= 1
            self._wakeup.set()  # a filling batch stops waiting once the thread is free
        self._forward_s = seconds if not self._forward_s else 0.8 * self._forward_s + 0.2 * seconds
        known = self._shape_s.get(shape)
        self._shape_s[shape] = seconds if known is None else 0.8 * known + 0.2 * seconds
        self._observe_pass(shape, seconds, len(sequences))
        record = partial(self._record_pass, requests, shape, sum(map(len, sequences)), started, seconds)
        if bad:
            record()
            raise self._non_finite(bad)
        return vectors, record

    def _record_pass(
        self, requests: list[QueuedRequest], shape: tuple[int, int], real: int, started: float, seconds: float
    ) -> None:
        """A pass in the metrics: its texts' waits, its time, its size in texts and in `real` tokens, and its
        padding."""
        m = self._series
        self._record_waits(started, requests)
        # Filler rows (the runner's batch buckets) are padding too: the device computes them all the same.
        padded = shape[0] * shape[1]
        m.inference_seconds.observe(seconds)
        m.batches.inc()
        m.batch_size.observe(len(requests))
        m.batch_tokens.observe(padded)
        m.padding_ratio.observe(1 - real / padded)
        m.tokens.inc(real)
        m.texts.inc(len(requests))

    def _non_finite(self, bad: int) -> InferenceError:
        return InferenceError(f"model {self.model} produced non-finite values for {bad} text(s)")

    def _observe_pass(self, shape: tuple[int, int], seconds: float, texts: int) -> None:
        """A computed pass: its time for the next passes' budget, its texts for admission's rate."""
        self._budget.observe(shape[0] * shape[1], seconds)
        # Work waits behind this pass: queued texts, or another batch handed to the MLX thread.
        self.admission.observe(texts, backlogged=bool(self._waiting.texts) or len(self._running) > 1)

    def _record_waits(self, started: float, requests: list[QueuedRequest]) -> None:
        """Each text's wait until its pass began on the MLX thread: queued, cut, and handed over."""
        observe_many(self._series.queue_wait, [started - request.enqueued for request in requests])

    async def _remote_pass(
        self, sequences: list[TokenIds], requests: list[QueuedRequest]
    ) -> tuple[np.ndarray, float, float, int]:
        """`_timed_embed` for a model in a process of its own."""
        if all(request.future.done() for request in requests):
            raise _Abandoned
        assert self._passes is not None
        started = time.perf_counter()
        try:
            return await self._passes.run(sequences)
        except Exception as exc:
            raise _FailedPass(started, exc) from exc

    def _timed_embed(
        self,
        sequences: list[TokenIds],
        requests: list[QueuedRequest],
        shape: tuple[int, int],
    ) -> tuple[np.ndarray, float, float, int]:
        """On the MLX thread: the forward pass, when it started, its own duration (not the wait for the
        thread), and how many of its vectors hold a non-finite value (counted here, off the event loop). A
        batch whose callers all left while it waited for the thread is not run (reading done() from this
        thread is a benign race: at worst one batch runs for nobody). Records the padded `shape` now running,
        and when it began and ended, by which the next batch's fill judges when this pass should end."""
        if all(request.future.done() for request in requests):
            raise _Abandoned
        self._forward_shape = shape
        started = self._forward_started = time.perf_counter()
        assert self._embed is not None  # a model of this process (else _remote_pass)
        try:
            vectors = self._embed(sequences)
        except Exception as exc:
            raise _FailedPass(started, exc) from exc
        finally:
            self._forward_ended = time.perf_counter()
        seconds = self._forward_ended - started
        return vectors, started, seconds, non_finite_rows(vectors)

    def _fail_queued(self, exc: Exception) -> None:
        for launched in self._launched:  # overlapped passes whose outcome nobody will read now
            for item in launched.batch:
                item.request.fail(exc)
            self._pass_over(launched.batch)
        self._launched = []
        for batch in self._planned:
            for item in batch:
                item.request.fail(exc)
            self._waiting.settle(batch)
        self._planned = []
        self._waiting.fail_all(exc)
        self._series.queue_depth.set_function(lambda: 0)
        self._series.pass_tokens_limit.set_function(lambda: 0)


class _Abandoned(Exception):
    """Every caller of a batch went away before it reached the MLX thread."""


class _FailedPass(Exception):
    """A forward pass raised `cause`; it had started on the MLX thread at `started`."""

    def __init__(self, started: float, cause: Exception) -> None:
        super().__init__(started, cause)
        self.started, self.cause = started, cause
