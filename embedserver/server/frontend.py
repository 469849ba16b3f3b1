"""A front-end process (HTTP_WORKERS): HTTP, validation and JSON in, vectors out as JSON; the model runs in the
engine process, reached over a Unix socket (embedserver/server/ipc.py).

In one Python process, HTTP parsing, validation, tokenization and response encoding share the interpreter
lock with batch assembly and MLX graph building. Several front-ends accept on the same listening socket (the
kernel spreads connections over them), prepare each request up to its token ids and send the engine only
those (embedserver/server/engine_client.py), so the engine's event loop does caching and batching and little
else. This module does not import MLX.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request, Response

from embedserver.api.app import build_app
from embedserver.api.guards import PUBLIC_KEY
from embedserver.errors import APIError
from embedserver.logs import configure_logging
from embedserver.metrics import own_process_stats
from embedserver.server import ipc
from embedserver.server.engine_client import EngineClient, ForwardedMetrics, RemoteService
from embedserver.server.http_server import serve_http
from embedserver.settings import Settings
from embedserver.tuning.gc_freeze import freeze_long_lived

# How often a front-end reports its CPU, memory and open files to the engine.
_PROCESS_REPORT_S = 5.0

log = logging.getLogger(__name__)

# Answered by the engine's own app (embedserver/api/routes_ops.py): they describe its models and metrics.
FORWARDED_PATHS = ("/health", "/ready", "/models", "/v1/models", "/metrics")
# Probed with HEAD by load balancers and monitors, as the engine's own app allows.
HEAD_PATHS = ("/health", "/ready", "/metrics")
# Reranking and the tokenizer routes run in the engine's app as a whole (a pair's prompt is built and
# tokenized there; the tokenizer routes are rare and want the model's own tokenizer, loaded there).
FORWARDED_POSTS = ("/v1/rerank", "/v2/rerank", "/rerank", "/tokenize", "/detokenize")


def create_frontend_app(settings: Settings, engine: socket.socket, index: int = 0) -> FastAPI:
    client = EngineClient()
    metrics = ForwardedMetrics(client)
    service = RemoteService(client, settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        await loop.create_unix_connection(lambda: client, sock=engine)
        watcher = asyncio.create_task(_exit_when_lost(client))
        # The default model's tokenizer, ready before the first request needs it (waits for the engine's load).
        warm = asyncio.create_task(_describe_default(service))
        reports = asyncio.create_task(_report_process(metrics, index))
        freeze_long_lived()
        try:
            yield
        finally:
            warm.cancel()
            reports.cancel()
            watcher.cancel()
            metrics.flush()  # the last requests' records, before the link closes
            client.flush()
            if client.transport is not None:
                client.transport.close()

    app = build_app(
        service, settings, lifespan=lifespan, operations=_forwarding_router(client), http_metrics=metrics
    )
    app.state.metrics = metrics
    return app


def _forwarding_router(client: EngineClient) -> APIRouter:
    router = APIRouter()

    async def forward(request: Request) -> Response:
        # Always a RESPONSE; `public`: asked for without the API key (embedserver/api/guards.py).
        asked = {
            "path": request.url.path,
            "method": request.method,
            "public": bool(request.scope.get(PUBLIC_KEY)),
        }
        payload = await request.body() if request.method == "POST" else b""
        _, meta, body = await client.call(ipc.ROUTE, asked, payload)
        headers = {k: v for k, v in meta["headers"] if k.lower() != "content-length"}
        return Response(body, status_code=meta["status"], headers=headers)

    for path in FORWARDED_PATHS:
        summary = f"GET {path} (answered by the engine process)"
        methods = ["GET", "HEAD"] if path in HEAD_PATHS else ["GET"]
        router.add_api_route(path, forward, methods=methods, name=path, summary=summary)
    for path in FORWARDED_POSTS:
        summary = f"POST {path} (answered by the engine process)"
        router.add_api_route(path, forward, methods=["POST"], name=f"POST {path}", summary=summary)
    return router


async def _describe_default(service: RemoteService) -> None:
    """Load the default model's tokenizer, then tell the engine, which is not ready until every front-end is."""
    with contextlib.suppress(APIError):  # a default that cannot load: the requests will say why
        await service.model(None)
        service.client.send(ipc.RECORD, 0, [{"event": "warm"}])


async def _exit_when_lost(client: EngineClient) -> None:
    """Without its engine a front-end can only answer 503: stop, so the supervisor (or the orchestrator,
    when the engine itself died) sees it."""
    await client.lost.wait()
    log.error("lost the engine process; front-end %d stops", os.getpid())
    os.kill(os.getpid(), signal.SIGTERM)


async def _report_process(metrics: ForwardedMetrics, index: int) -> None:
    """This process's CPU, memory and open files, to the engine's /metrics (embedserver_frontend_*)."""
    while True:
        metrics.process(index, own_process_stats())
        await asyncio.sleep(_PROCESS_REPORT_S)


def run(sock: socket.socket, engine: socket.socket, index: int = 0) -> None:
    """Entry point of a spawned front-end process: `sock` the HTTP listener, `engine` its end of a socket pair
    to the engine process, `index` its slot (stable across restarts)."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    app = create_frontend_app(settings, engine, index)
    metrics: ForwardedMetrics = app.state.metrics
    # The engine waits out DRAIN_DELAY_S before it stops the front-ends: they close at once.
    serve_http(app, settings, metrics=metrics, sockets=[sock], drain_delay_s=0)
