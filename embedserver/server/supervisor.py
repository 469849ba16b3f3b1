"""HTTP_WORKERS >= 1: this process owns MLX, the models and the batch queues (the engine process) and keeps
HTTP_WORKERS front-end processes (embedserver/server/frontend.py) accepting on one listening socket.

The engine speaks to each front-end over a socket pair made as it is started (one end kept, the other
passed to the new process), so nothing is written to the filesystem: the server starts on a read-only root
filesystem with no writable temporary directory (a hardened container). A front-end that
dies is started again (after 1 s, doubling while it keeps dying young); front-ends stop by themselves when the
engine goes away. On SIGTERM /ready turns 503 while everything still serves for DRAIN_DELAY_S; then the engine
closes its copy of the listener and refuses new calls (503 shutting_down), the front-ends close theirs (new
connections are refused at once) and finish their requests within SHUTDOWN_GRACE_S, then the engine exits; a
watchdog bounds the whole (embedserver/server/shutdown.py). SIGINT and a second signal skip the delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Literal

from embedserver.api.state import ServerState
from embedserver.backoff import doubling
from embedserver.server import frontend
from embedserver.server.engine_link import EngineLink
from embedserver.server.shutdown import arm_watchdog
from embedserver.settings import Settings

log = logging.getLogger(__name__)

_YOUNG_S = 10.0  # a front-end that dies sooner than this after starting is restarted with a growing delay
_MAX_DELAY_S = 30.0


def frontend_count(setting: int | Literal["auto"], backend: str, cores: int) -> int:
    """HTTP_WORKERS as a number. auto: front-ends where they pay (CUDA, on a machine with cores to spare for
    them): half the cores, 2 to 8, since front-ends tokenize as well as parse and encode, and a request's
    time in a busy front-end is time its texts are not in the next batch (the engine process, the MLX
    thread and a load balancer or clients keep the rest); on CPU the model needs the cores, and Metal has
    not been measured."""
    if setting != "auto":
        return setting
    return min(8, max(2, cores // 2)) if backend == "cuda" and cores >= 8 else 0


def serve_with_frontends(settings: Settings, workers: int) -> None:
    try:
        listener = _listen(settings.host, settings.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc.strerror or exc)
        raise SystemExit(3) from None  # uvicorn's start-up failure status, as with one process
    asyncio.run(_serve(settings, workers, listener))


async def _serve(settings: Settings, workers: int, listener: socket.socket) -> None:
    from embedserver.server.engine_app import create_app  # imports MLX: only the engine process gets here

    app = create_app(settings, http=False)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals: list[int] = []

    def on_signal(sig: int) -> None:
        signals.append(sig)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    links: set[asyncio.Task[object]] = set()  # front-ends' links being set up (the loop holds tasks weakly)

    def link(engine_end: socket.socket) -> None:
        task = loop.create_task(loop.connect_accepted_socket(lambda: EngineLink(app), engine_end))
        links.add(task)
        task.add_done_callback(links.discard)

    async with app.router.lifespan_context(app):
        pool = Frontends(workers, listener, link)
        app.state.server.cold_frontends = workers  # each reports when it is warm (engine_link.py)
        pool.start()
        log.info(
            "embedserver on http://%s:%d: %d front-end processes, engine pid %d",
            settings.host,
            settings.port,
            workers,
            os.getpid(),
        )
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            if not stop.is_set():
                pool.replace_dead()
        await _leave(app.state.server, settings, signals, listener)
        await pool.stop(settings.shutdown_grace_s + 1)


async def _leave(state: ServerState, settings: Settings, signals: list[int], listener: socket.socket) -> None:
    """Not ready, still serving for DRAIN_DELAY_S (SIGTERM only; a second signal ends the wait); then new
    calls are refused and this process's copy of the listener closed, so once the front-ends close theirs
    the port refuses connections instead of queueing them with nobody to accept."""
    state.leaving = True
    delay = settings.drain_delay_s if signals[0] == signal.SIGTERM else 0.0
    arm_watchdog(delay, settings.shutdown_grace_s)
    if delay > 0:
        log.info("SIGTERM: not ready; still serving for %.1f s (DRAIN_DELAY_S), then draining", delay)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and len(signals) == 1:
            await asyncio.sleep(0.05)
    state.service.draining = True
    listener.close()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Frontends:
    """The front-end processes: each gets the HTTP listener and its own end of a socket pair to the engine;
    `link` receives the engine's end as each one starts (again after a restart)."""

    def __init__(self, count: int, listener: socket.socket, link: Callable[[socket.socket], None]) -> None:
        self.count = count
        self.listener = listener
        self.link = link
        self._context = multiprocessing.get_context("spawn")  # a fresh interpreter: no MLX, no threads
        self._procs: list[BaseProcess | None] = [None] * count
        self._started = [0.0] * count
        self._failures = [0] * count
        self._due = [0.0] * count

    def start(self) -> None:
        for index in range(self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        engine_end, frontend_end = socket.socketpair()
        try:
            proc = self._context.Process(
                target=frontend.run,
                args=(self.listener, frontend_end, index),
                name=f"embedserver-frontend-{index}",
            )
            proc.start()
        except BaseException:
            engine_end.close()
            raise
        finally:
            frontend_end.close()  # the new process holds its own copy
        self.link(engine_end)
        self._procs[index] = proc
        self._started[index] = time.monotonic()

    def replace_dead(self) -> None:
        now = time.monotonic()
        for index, proc in enumerate(self._procs):
            if proc is not None and proc.is_alive():
                continue
            if proc is not None:
                young = now - self._started[index] < _YOUNG_S
                self._failures[index] = self._failures[index] + 1 if young else 1
                delay = doubling(1.0, self._failures[index], _MAX_DELAY_S)
                log.error(
                    "front-end process %s exited (status %s); starting another in %.0f s",
                    proc.pid,
                    proc.exitcode,
                    delay,
                )
                proc.close()
                self._procs[index] = None
                self._due[index] = now + delay
            if now >= self._due[index]:
                self._spawn(index)

    async def stop(self, grace_s: float) -> None:
        alive = [p for p in self._procs if p is not None and p.is_alive()]
        for proc in alive:
            proc.terminate()  # SIGTERM: the front-end drains (uvicorn's graceful shutdown)
        deadline = time.monotonic() + grace_s
        while any(p.is_alive() for p in alive) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for proc in alive:
            if proc.is_alive():
                log.warning("front-end process %s did not stop within %.0f s; killing it", proc.pid, grace_s)
                proc.kill()
            proc.join(1)
