"""The one place uvicorn is set up, for the single process and for each front-end process: the protocol with
deadlines and disconnect handling, and a draining step on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI

from embedserver.api.state import Embedder
from embedserver.metrics import HttpMetrics
from embedserver.server.http_protocol import ConnectionLimits, guarded_protocol
from embedserver.server.shutdown import arm_watchdog
from embedserver.settings import Settings

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """On SIGTERM: `leaving` turns /ready 503 at once while requests are still served for `drain_delay_s`, so
    a load balancer's health checks take the server out before anything is refused. Then new embedding work
    gets 503 shutting_down, uvicorn closes the listener (new connections are refused at once, never left
    hanging) and gives accepted requests SHUTDOWN_GRACE_S; a watchdog ends the process if all of it overruns.
    SIGINT (Ctrl-C) and a second signal skip the delay."""

    def __init__(
        self,
        config: uvicorn.Config,
        embedder: Embedder,
        *,
        drain_delay_s: float,
        grace_s: float,
        leaving: Callable[[], None],
    ) -> None:
        super().__init__(config)
        self._embedder = embedder
        self._drain_delay_s = drain_delay_s
        self._grace_s = grace_s
        self._leaving = leaving
        self._delay: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._delay is not None or self.should_exit:  # a second signal: close now
            if self._delay is not None:
                self._delay.cancel()
            self._close(sig, frame)
            return
        delay = self._drain_delay_s if sig == signal.SIGTERM else 0.0
        self._leaving()
        arm_watchdog(delay, self._grace_s)
        if delay <= 0:
            self._close(sig, frame)
            return
        log.info("SIGTERM: not ready; still serving for %.1f s (DRAIN_DELAY_S), then draining", delay)
        self._delay = threading.Timer(delay, self._close, (sig, frame))
        self._delay.daemon = True
        self._delay.start()

    def _close(self, sig: int, frame: FrameType | None) -> None:
        self._embedder.draining = True
        super().handle_exit(sig, frame)  # uvicorn's main loop sees should_exit within 0.1 s


def serve_http(
    app: FastAPI,
    settings: Settings,
    *,
    metrics: HttpMetrics,
    sockets: list[socket.socket] | None = None,
    drain_delay_s: float | None = None,
    leaving: Callable[[], None] = lambda: None,
) -> None:
    """Serve `app` until SIGTERM/SIGINT; on `sockets` when given (a front-end accepting on the engine's
    listener), else on HOST:PORT. `drain_delay_s` (DRAIN_DELAY_S unless given) and `leaving`: see
    DrainingServer."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,  # embedserver's own access log (api/request_metrics.py) says more
        log_config=None,  # uvicorn's loggers go through ours: one format, text or JSON
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        server_header=False,  # no `server: uvicorn`: what runs here is nobody's business
        http=guarded_protocol(ConnectionLimits.from_settings(settings), metrics),
    )
    server = DrainingServer(
        config,
        app.state.embedder,
        drain_delay_s=settings.drain_delay_s if drain_delay_s is None else drain_delay_s,
        grace_s=settings.shutdown_grace_s,
        leaving=leaving,
    )
    server.run(sockets=sockets)
