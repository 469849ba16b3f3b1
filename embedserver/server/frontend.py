"""A front-end process (HTTP_WORKERS): HTTP, validation and JSON in, vectors out as JSON; the model runs in the
engine process, reached over a Unix socket (embedserver/server/ipc.py).

One Python process tops out near ~2,000 small requests/s of HTTP parsing, validation and response encoding,
and that work shares the GIL with batch assembly and MLX graph building. Several front-ends accept on the
same listening socket (the kernel spreads connections over them) and send the engine only the calls, so the
engine's event loop does batching and little else. This module does not import MLX.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request, Response

from embedserver import errors
from embedserver.api.app import build_app
from embedserver.logs import configure_logging
from embedserver.server import ipc
from embedserver.server.http_server import serve_http
from embedserver.service.calls import EmbedCall, EmbedOutcome
from embedserver.settings import Settings
from embedserver.tuning.gc_freeze import freeze_long_lived

log = logging.getLogger(__name__)

# Answered by the engine's own app (embedserver/api/routes_ops.py): they describe its models and metrics.
FORWARDED_PATHS = ("/health", "/ready", "/models", "/v1/models", "/metrics")


def _engine_gone() -> errors.ModelUnavailable:
    return errors.ModelUnavailable("the engine process went away", code="engine_unavailable")


class EngineClient(ipc.FrameProtocol):
    """This front-end's connection to the engine process; calls are matched to answers by id."""

    def __init__(self) -> None:
        super().__init__()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[tuple[int, Any, bytes]]] = {}
        self.lost = asyncio.Event()

    def frame_received(self, kind: int, id_: int, meta: Any, payload: bytes) -> None:
        future = self._waiting.pop(id_, None)
        if future is not None and not future.done():
            future.set_result((kind, meta, payload))

    def connection_lost(self, exc: Exception | None) -> None:
        gone = _engine_gone()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(gone)
        self._waiting.clear()
        self.lost.set()

    async def call(self, kind: int, meta: Any) -> tuple[int, Any, bytes]:
        if self.lost.is_set():
            raise _engine_gone()
        id_ = next(self._ids)
        future: asyncio.Future[tuple[int, Any, bytes]] = asyncio.get_running_loop().create_future()
        self._waiting[id_] = future
        self.send(kind, id_, meta)
        try:
            return await future
        except asyncio.CancelledError:
            if self._waiting.pop(id_, None) is not None:
                self.send(ipc.CANCEL, id_, None)  # the engine drops this call's queued texts
            raise

    def record(self, meta: dict[str, Any]) -> None:
        self.send(ipc.RECORD, 0, meta)


class RemoteService:
    """The Embedder of a front-end process: the same calls and errors as EmbeddingService, run remotely."""

    def __init__(self, client: EngineClient) -> None:
        self.client = client
        self.draining = False

    async def embed(self, call: EmbedCall) -> EmbedOutcome:
        if self.draining:
            raise errors.shutting_down()
        kind, meta, payload = await self.client.call(ipc.EMBED, asdict(call))
        if kind == ipc.ERROR:
            raise ipc.rebuild_error(meta)
        vectors = np.frombuffer(payload, dtype=np.float32).reshape(meta["shape"])
        return EmbedOutcome(
            model=meta["model"], vectors=vectors, tokens=meta["tokens"], cached=meta["cached"]
        )


class ForwardedMetrics:
    """HttpMetrics that the engine process records (one /metrics for all processes)."""

    def __init__(self, client: EngineClient) -> None:
        self.client = client

    def request_done(self, endpoint: str, status: int, seconds: float) -> None:
        self.client.record({"event": "request", "endpoint": endpoint, "status": status, "seconds": seconds})

    def client_gone(self, stage: str) -> None:
        self.client.record({"event": "gone", "stage": stage})

    def body_timeout(self) -> None:
        self.client.record({"event": "body_timeout"})


def create_frontend_app(settings: Settings, engine_path: str) -> FastAPI:
    client = EngineClient()
    service = RemoteService(client)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        await loop.create_unix_connection(lambda: client, engine_path)
        watcher = asyncio.create_task(_exit_when_lost(client))
        freeze_long_lived()
        try:
            yield
        finally:
            watcher.cancel()
            if client.transport is not None:
                client.transport.close()

    metrics = ForwardedMetrics(client)
    app = build_app(
        service, settings, lifespan=lifespan, operations=_forwarding_router(client), http_metrics=metrics
    )
    app.state.metrics = metrics
    return app


def _forwarding_router(client: EngineClient) -> APIRouter:
    router = APIRouter()

    async def forward(request: Request) -> Response:
        _, meta, body = await client.call(ipc.GET, {"path": request.url.path})  # always a RESPONSE
        headers = {k: v for k, v in meta["headers"] if k.lower() != "content-length"}
        return Response(body, status_code=meta["status"], headers=headers)

    for path in FORWARDED_PATHS:
        router.add_api_route(
            path, forward, methods=["GET"], name=path, summary=f"GET {path} (answered by the engine process)"
        )
    return router


async def _exit_when_lost(client: EngineClient) -> None:
    """Without its engine a front-end can only answer 503: stop, so the supervisor (or the orchestrator,
    when the engine itself died) sees it."""
    await client.lost.wait()
    log.error("lost the engine process; front-end %d stops", os.getpid())
    os.kill(os.getpid(), signal.SIGTERM)


def run(sock: socket.socket, engine_path: str) -> None:
    """Entry point of a spawned front-end process."""
    settings = Settings()
    configure_logging(settings.log_level)
    app = create_frontend_app(settings, engine_path)
    metrics: ForwardedMetrics = app.state.metrics
    serve_http(app, settings, on_body_timeout=metrics.body_timeout, sockets=[sock])
