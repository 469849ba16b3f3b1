"""A model in a process of its own (MODEL_PROCESS): that process loads the model and runs its forward passes
and nothing else, and the engine's event loop sends it batches and reads back their vectors; no thread of the
engine waits on MLX.

Why: in the engine, the thread that queues a pass's kernels shares the interpreter lock with the event loop,
which runs Python most of the time under load, in turns of milliseconds. Each time MLX hands the thread back
to Python (after queueing a pass, after the device finishes one) it waits for the loop to let go of the lock,
up to CPython's 5 ms switch interval: a fifth of the launching thread's time at 512 clients of short texts on
an H200 (docs/perf/log.md). Here the model's process has two threads, each running little Python: one reads
batches and queues their passes, the other waits for the device and sends vectors back; in the engine, the
passes are protocol callbacks on its loop.

The wire is the front-ends' frame format (ipc.py) over a socket pair. Engine -> model: RUN (one pass, run
whole) or LAUNCH (queued, then collected on the model's collector thread), meta {"lengths"}, payload the
int32 ids back to back; the engine closes the socket to stop the process. Model -> engine: READY once loaded
(meta: what the service reads of a runner) or LOAD_FAILED, then per pass LAUNCHED (when queued) and DONE
(meta: its start and end on the machine's monotonic clock, which both processes read, how many vectors hold
a non-finite value, and the process's memory, which /health adds to the engine's; payload: float32 vectors)
or FAILED.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from embedserver.batching.launched import LaunchedPass, non_finite_rows
from embedserver.catalog import ModelSpec, Task
from embedserver.errors import ModelUnavailable
from embedserver.logs import configure_logging
from embedserver.runtime import device
from embedserver.runtime.model_files import ModelFiles, ModelLoadError
from embedserver.runtime.pooling import Pooling
from embedserver.server import ipc
from embedserver.settings import Settings
from embedserver.tokenization.token_ids import TokenIds
from embedserver.tokenization.tokenizer import TextTokenizer
from embedserver.tuning.gc_freeze import freeze_long_lived
from embedserver.tuning.threads import name_this_process, named_executor

log = logging.getLogger(__name__)

# Engine -> model.
RUN, LAUNCH = 1, 2
# Model -> engine.
READY, LOAD_FAILED, LAUNCHED, DONE, FAILED = 10, 11, 12, 13, 14

# How long a stopped model's process gets to exit after its socket closes, before it is killed.
_EXIT_GRACE_S = 10.0


class PassFailed(RuntimeError):
    """A pass raised in the model's process (its message is the error there)."""


def start_model_process(settings: Settings, spec: ModelSpec, files: ModelFiles) -> ModelProcess:
    """The registry's loader under MODEL_PROCESS: start the model's process and wait until it has loaded and
    warmed the model (blocking: runs on the registry's executor). Raises ModelLoadError with the reason
    there."""
    ours, theirs = socket.socketpair()
    process = multiprocessing.get_context("spawn").Process(
        target=_serve,
        args=(theirs, settings, spec, files),
        name=f"embedserver-model-{spec.name}",
        daemon=True,  # ends with the engine
    )
    process.start()
    theirs.close()
    meta: dict[str, Any] = {}
    try:
        kind, _, meta, _ = next(ipc.recv_frames(ours), (None, 0, meta, b""))
    except OSError as exc:
        kind, meta = None, {"message": str(exc)}
    if kind != READY:
        ours.close()
        process.join(_EXIT_GRACE_S)
        if process.is_alive():
            process.kill()
        reason = meta.get("message") if kind == LOAD_FAILED else None
        raise ModelLoadError(
            reason or f"the model's process exited during the load (code {process.exitcode})"
        )
    return ModelProcess(process, ours, meta, files, settings)


class ModelProcess:
    """The engine's side of a model in a process of its own: what the service reads of a runner, and its
    passes (batching.launched.RemotePasses), sent and answered on the event loop."""

    # The worker overlaps passes through `passes`, not a launch function of this process.
    overlap_passes = False

    def __init__(
        self,
        process: multiprocessing.process.BaseProcess,
        sock: socket.socket,
        meta: dict[str, Any],
        files: ModelFiles,
        settings: Settings,
    ) -> None:
        self.name: str = meta["name"]
        self.source: str = meta["source"]
        self.revision: str = meta["revision"]
        self.pooling: Pooling = meta["pooling"]
        self.max_length: int = meta["max_length"]
        self.query_task: str | None = meta["query_task"]
        self.task: Task = meta["task"]
        self.dimension: int = meta["dimension"]
        self.bucket_rows: bool = meta["bucket_rows"]
        self.split_tokens: int = meta["split_tokens"]
        # That process's memory (RSS and MLX's), as it last reported it: after the load, then with each pass.
        self.memory: dict[str, int] = meta["memory"]
        # Whether passes overlap there (GPUs); elsewhere each runs whole, as in the engine.
        self._overlap: bool = meta["overlap_passes"]
        self.tokenizer = TextTokenizer(
            files.directory / "tokenizer.json", end_token=meta["end_token"], fast=settings.fast_tokenizer
        )
        self.passes = self
        # Called on the event loop when the process goes away unasked (`attach`).
        self._on_exit: Callable[[], None] | None = None
        self._process = process
        self._sock = sock
        self._link: asyncio.Task[_PassLink] | None = None  # connected on the event loop by `attach`, at load
        self._collecting: dict[LaunchedPass, asyncio.Future[tuple[dict[str, Any], bytes]]] = {}
        self._device_end = 0.0  # when the last collected pass ended
        self._closed = False

    # --- RemotePasses -----------------------------------------------------------------------------------
    async def launch(self, launched: LaunchedPass, alone: Callable[[], bool]) -> None:
        if all(request.future.done() for request in launched.requests):
            launched.abandoned = launched.collected = True
            return
        whole = not self._overlap or alone()
        try:
            link = await self._connected()
            acked, done = link.request(RUN if whole else LAUNCH, [item.ids for item in launched.batch])
            if whole:
                meta, payload = await done
                self._read(launched, meta, payload, previous_end=0.0)
                launched.collected = True
                return
            launched.started = (await acked)["started"]
        except Exception as exc:
            launched.error, launched.collected = exc, True
            return
        self._collecting[launched] = done

    def collected(self, launched: LaunchedPass) -> asyncio.Future[None]:
        done = self._collecting.pop(launched)
        finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def read(answer: asyncio.Future[tuple[dict[str, Any], bytes]]) -> None:
            error = answer.exception()
            if error is not None:
                launched.error = error  # type: ignore[assignment]
            else:
                meta, payload = answer.result()
                self._device_end = self._read(launched, meta, payload, previous_end=self._device_end)
            launched.collected = True
            finished.set_result(None)

        done.add_done_callback(read)
        return finished

    async def run(self, sequences: list[TokenIds]) -> tuple[np.ndarray, float, float, int]:
        link = await self._connected()
        _, done = link.request(RUN, sequences)
        meta, payload = await done
        self.memory = meta["memory"]
        vectors = _vectors(meta, payload)
        return vectors, meta["started"], meta["ended"] - meta["started"], meta["bad"]

    def _read(
        self, launched: LaunchedPass, meta: dict[str, Any], payload: bytes, *, previous_end: float
    ) -> float:
        """A DONE answer into `launched`; its time is what it added to the device's queue (LaunchedPass.collect).
        Returns when it ended."""
        self.memory = meta["memory"]
        launched.started = meta["started"]
        launched.vectors = _vectors(meta, payload)
        launched.bad = meta["bad"]
        launched.seconds = meta["ended"] - max(meta["started"], previous_end)
        return float(meta["ended"])

    # --- the process ------------------------------------------------------------------------------------
    async def attach(self, on_exit: Callable[[], None]) -> None:
        """Connect to the process on this event loop now, so that its exit is heard even while no pass runs;
        `on_exit` is called then (not when `aclose` stops it)."""
        self._on_exit = on_exit
        await self._connected()

    async def _connected(self) -> _PassLink:
        if self._closed:
            raise _gone()
        if self._link is None:
            self._link = asyncio.create_task(self._connect())
        return await asyncio.shield(self._link)

    async def _connect(self) -> _PassLink:
        link = _PassLink(self._exited)
        await asyncio.get_running_loop().connect_accepted_socket(lambda: link, self._sock)
        return link

    def _exited(self) -> None:
        if not self._closed and self._on_exit is not None:
            log.error("the process of model %s exited (code %s)", self.name, self._process.exitcode)
            self._on_exit()

    @property
    def alive(self) -> bool:
        return not self._closed and self._process.is_alive()

    async def aclose(self) -> None:
        """Stop the process: close its socket (it exits once it reads the end), then wait for it, off the
        event loop, killing it after a grace period."""
        self._closed = True
        if self._link is not None and self._link.done() and not self._link.cancelled():
            link = self._link.result()
            if link.transport is not None:
                link.transport.close()
        else:
            self._sock.close()
        await asyncio.get_running_loop().run_in_executor(None, self._reap)

    def _reap(self) -> None:
        self._process.join(_EXIT_GRACE_S)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


class _PassLink(ipc.FrameProtocol):
    """The socket to a model's process, on the engine's event loop: passes by id, and their answers."""

    def __init__(self, on_lost: Callable[[], None]) -> None:
        super().__init__()
        self._ids = itertools.count(1)
        self._acked: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._done: dict[int, asyncio.Future[tuple[dict[str, Any], bytes]]] = {}
        self._on_lost = on_lost
        self.lost = False

    def request(
        self, kind: int, sequences: Sequence[TokenIds]
    ) -> tuple[asyncio.Future[dict[str, Any]], asyncio.Future[tuple[dict[str, Any], bytes]]]:
        """Send a pass now; futures of its LAUNCHED and its DONE answers (a FAILED one fails both)."""
        if self.lost:
            raise _gone()
        loop = asyncio.get_running_loop()
        id_ = next(self._ids)
        acked = self._acked[id_] = loop.create_future()
        done = self._done[id_] = loop.create_future()
        if kind == RUN:
            acked.set_result({})  # run whole: no LAUNCHED comes
            del self._acked[id_]
        lengths = [len(ids) for ids in sequences]
        payload = np.concatenate([np.asarray(ids, dtype=np.int32) for ids in sequences]).tobytes()
        self.send(kind, id_, {"lengths": lengths}, payload)
        self.flush()  # now, not at the turn's end: the model's process may be idle
        return acked, done

    def frame_received(self, kind: int, id_: int, meta: Any, payload: bytes) -> None:
        if kind == LAUNCHED:
            _settle(self._acked.pop(id_, None), meta)
        elif kind == DONE:
            _settle(self._done.pop(id_, None), (meta, payload))
        elif kind == FAILED:
            failure = PassFailed(meta["message"])
            waiting: list[asyncio.Future[Any] | None] = [
                self._acked.pop(id_, None),
                self._done.pop(id_, None),
            ]
            for future in waiting:
                if future is not None and not future.done():
                    future.set_exception(failure)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        gone = _gone()
        pending: list[asyncio.Future[Any]] = [*self._acked.values(), *self._done.values()]
        for future in pending:
            if not future.done():
                future.set_exception(gone)
        self._acked.clear()
        self._done.clear()
        self._on_lost()


def _settle(future: asyncio.Future[Any] | None, value: Any) -> None:
    if future is not None and not future.done():
        future.set_result(value)


def _gone() -> ModelUnavailable:
    return ModelUnavailable(
        "the model's process went away; it is being reloaded", code="model_process_exited"
    )


def _vectors(meta: dict[str, Any], payload: bytes) -> np.ndarray:
    return np.frombuffer(payload, dtype=np.float32).reshape(meta["rows"], meta["columns"])


# --- the model's process -------------------------------------------------------------------------------------
def _serve(sock: socket.socket, settings: Settings, spec: ModelSpec, files: ModelFiles) -> None:
    """Entry point of a model's process: load and warm the model as the engine would, then run the passes the
    engine sends until it closes the socket. This thread launches passes (MLX's thread here); a collector
    thread waits for each and sends its vectors."""
    configure_logging(settings.log_level, settings.log_format)
    name_this_process(f"model-{spec.name}")  # tells it from the front-ends in `ps` and `top`
    from embedserver.runtime.load_steps import run_steps
    from embedserver.server.engine_app import load_model  # imports MLX: only this process and the engine's

    lock = threading.Lock()

    def send(kind: int, id_: int, meta: Any, payload: bytes = b"") -> None:
        data = ipc.frame(kind, id_, meta, payload)
        with lock:
            sock.sendall(data)

    try:
        runner = run_steps(load_model(settings, spec, files))
    except Exception as exc:
        log.exception("model %s failed to load", spec.name)
        send(LOAD_FAILED, 0, {"message": str(exc) or type(exc).__name__})
        return
    freeze_long_lived()
    send(
        READY,
        0,
        {
            "name": runner.name,
            "source": runner.source,
            "revision": runner.revision,
            "pooling": runner.pooling,
            "max_length": runner.max_length,
            "query_task": runner.query_task,
            "task": runner.task,
            "dimension": runner.dimension,
            "bucket_rows": runner.bucket_rows,
            "split_tokens": runner.split_tokens,
            "overlap_passes": runner.overlap_passes,
            "end_token": runner.tokenizer.end_token,
            "memory": device.memory(),
        },
    )
    collector = named_executor("collect", 1)
    try:
        for kind, id_, meta, payload in ipc.recv_frames(sock):
            flat = np.frombuffer(payload, dtype=np.int32)
            bounds = np.cumsum([0, *meta["lengths"]])
            sequences: list[TokenIds] = [flat[a:b] for a, b in itertools.pairwise(bounds)]
            started = time.perf_counter()
            try:
                if kind == RUN:
                    _send_done(send, id_, runner.embed(sequences), started)
                    continue
                wait = runner.launch(sequences)
            except Exception as exc:
                send(FAILED, id_, {"message": str(exc) or type(exc).__name__})
                continue
            send(LAUNCHED, id_, {"started": started})
            collector.submit(_collect, send, id_, wait, started)
    except OSError:
        pass  # the engine went away
    finally:
        collector.shutdown(wait=True)


def _collect(send: Callable[..., None], id_: int, wait: Callable[[], np.ndarray], started: float) -> None:
    """On the model's collector thread: wait for a launched pass and send its vectors (or why it failed)."""
    with contextlib.suppress(OSError):  # the engine went away
        try:
            vectors = wait()
        except Exception as exc:
            send(FAILED, id_, {"message": str(exc) or type(exc).__name__})
            return
        _send_done(send, id_, vectors, started)


def _send_done(send: Callable[..., None], id_: int, vectors: np.ndarray, started: float) -> None:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    rows, columns = vectors.shape
    meta = {
        "started": started,
        "ended": time.perf_counter(),
        "bad": non_finite_rows(vectors),
        "rows": rows,
        "columns": columns,
        "memory": device.memory(),
    }
    send(DONE, id_, meta, vectors.tobytes())
