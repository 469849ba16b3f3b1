"""The one place uvicorn is set up, for the single process and for each front-end process: the protocol with
deadlines and disconnect handling, and a draining step on SIGTERM/SIGINT."""

from __future__ import annotations

import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI

from embedserver.api.state import Embedder
from embedserver.metrics import HttpMetrics
from embedserver.server.http_protocol import ConnectionLimits, guarded_protocol
from embedserver.settings import Settings


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT, first turn readiness off and refuse new embedding requests (503), then let uvicorn
    stop listening and finish the accepted requests within SHUTDOWN_GRACE_S."""

    def __init__(self, config: uvicorn.Config, embedder: Embedder) -> None:
        super().__init__(config)
        self._embedder = embedder

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._embedder.draining = True
        super().handle_exit(sig, frame)


def serve_http(
    app: FastAPI,
    settings: Settings,
    *,
    metrics: HttpMetrics,
    sockets: list[socket.socket] | None = None,
) -> None:
    """Serve `app` until SIGTERM/SIGINT; on `sockets` when given (a front-end accepting on the engine's
    listener), else on HOST:PORT."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=settings.log_level == "DEBUG",
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        server_header=False,  # no `server: uvicorn`: what runs here is nobody's business
        http=guarded_protocol(ConnectionLimits.from_settings(settings), metrics),
    )
    DrainingServer(config, app.state.embedder).run(sockets=sockets)
