"""The hook of benchmarks/pass_trace.py. With this directory first on PYTHONPATH and PASS_TRACE=FILE set, a
Python process imports this file at start-up; once that process imports the batch worker (only the engine
process does), the worker's overlapped passes append one JSON line an event to FILE, and once it imports the
front-end's engine client (front-ends do), so does each embedding call's round trip to the engine; and each
process's event loop is probed for lag (how late a timer fires). Nothing is patched
otherwise, and the server's code is not changed: the methods are wrapped as they are imported. Being first on
the path, this file stands in for any other sitecustomize of the interpreter while the trace runs."""

from __future__ import annotations

import gc
import importlib.abc
import importlib.machinery
import json
import os
import sys
import threading
import time
from types import ModuleType
from typing import Any

_WORKER = "embedserver.batching.worker"
_ENGINE_CLIENT = "embedserver.server.engine_client"
_MODEL_PROCESS = "embedserver.server.model_process"
_FLUSH_EVERY_S = 0.2
# How often each process's event loop is probed for lag, and how many probes an event sums.
_LAG_EVERY_S = 0.002
_LAG_WINDOW_S = 0.1
# A callback of an asyncio loop that runs at least this long is recorded with what it was (a stall's cause).
_SLOW_CALLBACK_S = 0.004


class _Recorder:
    """Events in memory, written to the file by a daemon thread every _FLUSH_EVERY_S (the server may end
    without running atexit handlers)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.events: list[tuple[Any, ...]] = []
        threading.Thread(target=self._flush_forever, name="pass-trace", daemon=True).start()

    def add(self, *event: Any) -> None:
        with self.lock:
            self.events.append(event)

    def _flush_forever(self) -> None:
        while True:
            time.sleep(_FLUSH_EVERY_S)
            with self.lock:
                events, self.events = self.events, []
            if events:
                # One write to a file opened for appending: the engine and its front-ends share the file,
                # and Linux appends a write to a regular file whole.
                data = "".join(json.dumps(event) + "\n" for event in events).encode()
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)


def _watch_loop(role: str, record: _Recorder) -> None:
    """From the running event loop on: a timer every _LAG_EVERY_S, and how late each fires (the time the loop
    takes to get to what is due, frames from the other processes included), recorded as one event per
    _LAG_WINDOW_S of ticks: ("loop_lag", role, end, ticks, summed lateness, the largest); and the cyclic
    garbage collector's pauses over the same window, since a collection holds the interpreter lock while it
    runs: ("gc", role, end, the window's seconds, collections by generation, seconds by generation, the
    longest). On an asyncio loop (the engine's), its slow callbacks too (_time_callbacks)."""
    import asyncio  # here: every process with the hook on its path imports this file, traced or not

    loop = asyncio.get_running_loop()
    now = time.perf_counter
    window = [now(), 0, 0.0, 0.0]  # started, ticks, summed lateness, largest
    # The cyclic collector's pauses in the same window: collections and seconds by generation, the longest.
    collections, paused, longest, began = [0, 0, 0], [0.0, 0.0, 0.0], [0.0], [0.0]

    def collector(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = now()
            return
        seconds, generation = now() - began[0], info["generation"]
        collections[generation] += 1
        paused[generation] += seconds
        longest[0] = max(longest[0], seconds)

    gc.callbacks.append(collector)
    if isinstance(loop, asyncio.BaseEventLoop):  # uvloop's callbacks (the front-ends') cannot be wrapped
        _time_callbacks(asyncio, role, record)

    def tick(due: float) -> None:
        at = now()
        late = max(0.0, at - due)
        window[1] += 1
        window[2] += late
        window[3] = max(window[3], late)
        if at - window[0] >= _LAG_WINDOW_S:
            record.add("loop_lag", role, at, window[1], window[2], window[3])
            record.add("gc", role, at, at - window[0], list(collections), list(paused), longest[0])
            window[:] = [at, 0, 0.0, 0.0]
            collections[:], paused[:], longest[0] = [0, 0, 0], [0.0, 0.0, 0.0], 0.0
        loop.call_later(_LAG_EVERY_S, tick, now() + _LAG_EVERY_S)

    loop.call_later(_LAG_EVERY_S, tick, now() + _LAG_EVERY_S)


def _time_callbacks(asyncio: ModuleType, role: str, record: _Recorder) -> None:
    """Each callback the loop runs, timed; one that runs _SLOW_CALLBACK_S or longer is recorded as ("slow",
    role, start, seconds, what it was: a task's coroutine, or the callback's name)."""
    handle = asyncio.events.Handle
    run = handle._run
    now = time.perf_counter

    def timed_run(self: Any) -> None:
        started = now()
        run(self)
        took = now() - started
        if took >= _SLOW_CALLBACK_S:
            record.add("slow", role, started, took, _described(asyncio, self._callback))

    handle._run = timed_run


def _described(asyncio: ModuleType, callback: Any) -> str:
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        return f"task {getattr(coro, '__qualname__', type(coro).__name__)}"
    name = getattr(callback, "__qualname__", None)
    return str(name) if name else repr(callback)[:160]


_PASSES: dict[int, int] = {}  # id of a pass in flight -> its number
_NUMBERS = iter(range(1 << 62))


def _wrap_model_process(model_process: ModuleType, record: _Recorder) -> None:
    """MODEL_PROCESS: the same launch and collect records for passes the model's own process runs, as the
    engine sees them: a launch from its send to the answer that the pass is queued there, a collection when
    the pass ended there (the shared monotonic clock)."""
    now = time.perf_counter
    cls = model_process.ModelProcess
    launch, collected = cls.launch, cls.collected

    async def traced_launch(self: Any, launched: Any, alone: Any) -> None:
        number = _PASSES[id(launched)] = next(_NUMBERS)
        start = now()
        await launch(self, launched, alone)
        rows, length = launched.shape
        record.add("launch", number, start, now(), len(launched.batch), rows, length, launched.collected)

    def traced_collected(self: Any, launched: Any) -> Any:
        finished = collected(self, launched)
        number = _PASSES.get(id(launched), -1)
        finished.add_done_callback(lambda _: record.add("collect", number, self._device_end))
        return finished

    cls.launch, cls.collected = traced_launch, traced_collected


def _wrap(worker: ModuleType, record: _Recorder) -> None:
    """Wrap the batch worker's cut and answer and the launched pass's launch and collection: each records its
    perf_counter times (CLOCK_MONOTONIC, the same in every process of the machine)."""
    now = time.perf_counter
    passes, numbers = _PASSES, _NUMBERS
    worker_cls, pass_cls = worker.BatchWorker, worker.LaunchedPass
    cut, answer, launch, collect = worker_cls._cut, worker_cls._answer, pass_cls.launch, pass_cls.collect

    def traced_cut(self: Any, *, busy: bool) -> Any:
        # Texts waiting: `_waiting.texts`, or `_queued` in trees from before waiting.py (gpu_bench --server).
        waiting = getattr(self, "_waiting", None)
        queued = waiting.texts if waiting is not None else self._queued
        start, in_flight = now(), len(self._launched)
        batch = cut(self, busy=busy)
        record.add("cut", start, now(), queued, len(batch), in_flight)
        return batch

    def traced_launch(self: Any, *args: Any) -> None:
        number = passes[id(self)] = next(numbers)
        start = now()
        launch(self, *args)
        rows, length = self.shape
        record.add("launch", number, start, now(), len(self.batch), rows, length, self.collected)

    def traced_collect(self: Any, previous_end: float) -> float:
        ended: float = collect(self, previous_end)
        record.add("collect", passes.get(id(self), -1), ended)
        return ended

    def traced_answer(self: Any, done: Any) -> None:
        start = now()
        answer(self, done)
        record.add("answer", passes.pop(id(done), -1), start, now())

    start = worker_cls.start
    watched: list[bool] = []

    def traced_start(self: Any) -> None:
        start(self)
        if not watched:  # one watch a process, whatever the models
            watched.append(True)
            _watch_loop("engine", record)

    worker_cls._cut, worker_cls._answer, worker_cls.start = traced_cut, traced_answer, traced_start
    pass_cls.launch, pass_cls.collect = traced_launch, traced_collect


def _wrap_frontend(engine_client: ModuleType, record: _Recorder) -> None:
    """Wrap a front-end's link to the engine: each embedding call's round trip as the front-end sees it, from
    the frame that carries it leaving to its answer arriving (the engine's own share is in its metrics); and
    how long calls wait in the front-end for their frame (calls of one loop turn leave together, at its end):
    one ("dispatch", at, calls, summed wait, longest) a frame."""
    now = time.perf_counter
    client = engine_client.EngineClient
    send, answered, connected = client._send_embeds, client._answered, client.connection_made
    sent: dict[int, float] = {}
    queued: dict[int, float] = {}

    class Stamped(dict):  # type: ignore[type-arg]
        """The client's calls of this turn, each stamped as it is queued."""

        def __setitem__(self, id_: int, call: Any) -> None:
            queued[id_] = now()
            super().__setitem__(id_, call)

        def pop(self, id_: int, *default: Any) -> Any:  # a call cancelled before its frame left
            queued.pop(id_, None)
            return super().pop(id_, *default)

    def traced_connection_made(self: Any, transport: Any) -> None:
        connected(self, transport)
        self._embeds = Stamped()
        _watch_loop("frontend", record)  # a front-end connects to the engine once

    def traced_send(self: Any) -> None:
        at = now()
        waits = [at - queued.pop(id_, at) for id_ in self._embeds]
        for id_ in self._embeds:
            sent[id_] = at
        send(self)
        self._embeds = Stamped()
        if waits:
            record.add("dispatch", at, len(waits), sum(waits), max(waits))

    def traced_answered(self: Any, id_: int, *args: Any) -> None:
        left = sent.pop(id_, None)
        if left is not None:
            at = now()
            record.add("engine_trip", at, at - left)
        answered(self, id_, *args)

    client._send_embeds, client._answered = traced_send, traced_answered
    client.connection_made = traced_connection_made


_WRAPPERS = {_WORKER: _wrap, _ENGINE_CLIENT: _wrap_frontend, _MODEL_PROCESS: _wrap_model_process}


class _WrapOnImport(importlib.abc.MetaPathFinder):
    def __init__(self, path: str) -> None:
        self.path = path
        self.recorder: _Recorder | None = None

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        wrap = _WRAPPERS.get(name)
        if wrap is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader: Any = spec.loader
        execute = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            if self.recorder is None:
                self.recorder = _Recorder(self.path)
            wrap(module, self.recorder)

        loader.exec_module = exec_module
        return spec


if os.environ.get("PASS_TRACE"):
    sys.meta_path.insert(0, _WrapOnImport(os.environ["PASS_TRACE"]))
