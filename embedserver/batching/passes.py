"""Forward passes on the MLX thread, one after another on the device without the device waiting for the host.

A pass has a host side (its graph built and its kernels queued: milliseconds of CPU for a 28-layer model
before its first kernel runs) and a device side. Run whole, one after another, the device idles while the
host prepares each pass. Where the device runs passes asynchronously (GPUs), a pass is two jobs on the MLX
thread: `launch` (graph built, kernels queued) and `collect` (wait for the device, vectors out). While more
work waits, a pass is collected only once the next pass has been launched behind it, so the host builds
pass N+1 while the device runs pass N and the device goes from one to the next at once. With nothing else
waiting or running, a pass is launched and collected in one job: a lone request pays no extra hop.

The MLX thread runs jobs in the order they are handed over, so "launched behind it" means "handed over
before its collect": a pass that has been launched waits (on the event loop) for the next launch to be
handed over, or for the time its pass should take, whichever comes first, and then hands over its collect.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Protocol

import numpy as np


class Launched(Protocol):
    def collect(self) -> np.ndarray: ...


EmbedFn = Callable[[list[list[int]]], np.ndarray]
LaunchFn = Callable[[list[list[int]]], Launched]


class Abandoned(Exception):
    """Every caller of a batch went away before it reached the MLX thread."""


class PassOutcome:
    """A pass's vectors, how long the device took on it, and whether every value is finite."""

    __slots__ = ("finite", "seconds", "vectors")

    def __init__(self, vectors: np.ndarray, seconds: float) -> None:
        self.vectors, self.seconds = vectors, seconds
        self.finite = bool(np.isfinite(vectors).all())  # checked on the MLX thread, off the event loop


class _OnDevice:
    """A launched pass (MLX thread side): its shape and when the device began on it, once known."""

    __slots__ = ("began", "launched", "shape")

    def __init__(self, launched: Launched, shape: tuple[int, int]) -> None:
        self.launched, self.shape = launched, shape
        self.began = 0.0


class Passes:
    """Runs a model's forward passes on the MLX thread (`executor`), overlapped when `launch` is given."""

    def __init__(self, executor: Executor, embed: EmbedFn, launch: LaunchFn | None) -> None:
        self._executor = executor
        self._embed = embed
        self._launch = launch
        self.in_flight = 0  # passes handed to the MLX thread and not yet collected (event loop side)
        # When the device began its current (or last) pass, and that pass's padded shape: written on the MLX
        # thread, read by the worker to judge when the running pass should end.
        self.began = 0.0
        self.shape = (0, 0)
        self._on_device: deque[_OnDevice] = deque()  # launched, not collected (MLX thread side)
        self._launches = 0  # launches handed over so far
        self._waiting: list[asyncio.Future[None]] = []  # launched passes waiting for the next launch

    async def run(
        self,
        sequences: list[list[int]],
        gone: Callable[[], bool],
        shape: tuple[int, int],
        *,
        more_coming: Callable[[], bool],
        expected_s: float,
    ) -> PassOutcome:
        """The pass's outcome. `gone()` (read on the MLX thread) says every caller left: the pass is not run
        (Abandoned). `more_coming()` says more work waits to be cut into a pass; `expected_s`, how long this
        pass should take (0: unknown)."""
        if self._launch is not None and (self.in_flight or more_coming()):
            # Shielded: a launched pass is always collected, so the MLX thread's record of what the device
            # holds stays true even if the caller is cancelled.
            overlapped = asyncio.ensure_future(
                self._overlapped(sequences, gone, shape, more_coming, expected_s)
            )
            overlapped.add_done_callback(_retrieve)
            return await asyncio.shield(overlapped)
        self.in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._whole, sequences, gone, shape)
        finally:
            self.in_flight -= 1

    async def _overlapped(
        self,
        sequences: list[list[int]],
        gone: Callable[[], bool],
        shape: tuple[int, int],
        more_coming: Callable[[], bool],
        expected_s: float,
    ) -> PassOutcome:
        loop = asyncio.get_running_loop()
        self.in_flight += 1
        try:
            launching = loop.run_in_executor(self._executor, self._start, sequences, gone, shape)
            self._announce()
            mine = self._launches
            launched_at = time.perf_counter()
            on_device = await launching
            # Collect behind the next launch, if one comes in time. The bound is twice the pass's own duration:
            # launched behind another pass, it ends that pass's remainder after its own duration from now.
            remaining = launched_at + 2 * expected_s - time.perf_counter()
            if self._launches == mine and remaining > 0 and more_coming():
                waiter = loop.create_future()
                self._waiting.append(waiter)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter, remaining)
            return await loop.run_in_executor(self._executor, self._finish, on_device)
        finally:
            self.in_flight -= 1

    def _announce(self) -> None:
        self._launches += 1
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            if not waiter.done():
                waiter.set_result(None)

    # --- on the MLX thread ----------------------------------------------------------------------------
    def _whole(
        self, sequences: list[list[int]], gone: Callable[[], bool], shape: tuple[int, int]
    ) -> PassOutcome:
        if gone():
            raise Abandoned
        self.shape = shape
        started = self.began = time.perf_counter()
        vectors = self._embed(sequences)
        return PassOutcome(vectors, time.perf_counter() - started)

    def _start(
        self, sequences: list[list[int]], gone: Callable[[], bool], shape: tuple[int, int]
    ) -> _OnDevice:
        if gone():
            raise Abandoned
        assert self._launch is not None
        now = time.perf_counter()
        on_device = _OnDevice(self._launch(sequences), shape)
        if not self._on_device:  # the device is free: it begins as the kernels arrive
            on_device.began = self.began = now
            self.shape = shape
        self._on_device.append(on_device)
        return on_device

    def _finish(self, on_device: _OnDevice) -> PassOutcome:
        try:
            vectors = on_device.launched.collect()
        finally:
            self._on_device.remove(on_device)
        now = time.perf_counter()
        if self._on_device:  # the device went on to the pass launched behind this one
            following = self._on_device[0]
            if not following.began:
                following.began = self.began = now
                self.shape = following.shape
        return PassOutcome(vectors, now - on_device.began)


def _retrieve(task: asyncio.Future[PassOutcome]) -> None:
    """Marks a shielded pass's exception as seen: its caller, if cancelled, is no longer there to see it."""
    if not task.cancelled():
        task.exception()
