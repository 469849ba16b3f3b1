"""The one place the FastAPI app is put together, whatever the process layout: the embedding routes in
front of an Embedder (the service itself, or a front-end's link to it), the operations routes the process
serves, error rendering, and the HTTP layers.

The HTTP layers (embedserver/api/layers.py) run in front of the framework, not inside its middleware stack:
an embedding request the fast lane answers passes through them once and through none of FastAPI's and
Starlette's own layers (error, telemetry, body limit, exception, exit stack: a coroutine each a request, and
two wrap `send` again). Everything the lane does not answer continues into FastAPI unchanged, and what the
framework answers (500s included) passes back through them."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from fastapi import APIRouter, FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from embedserver import __version__
from embedserver.api import error_handlers
from embedserver.api.docs import install_docs
from embedserver.api.layers import http_layers
from embedserver.api.responses import JSON
from embedserver.api.routes_native import router as native_router
from embedserver.api.routes_openai import router as openai_router
from embedserver.api.routes_rerank import router as rerank_router
from embedserver.api.routes_tokenize import router as tokenize_router
from embedserver.api.state import Embedder, ServerState
from embedserver.metrics import HttpMetrics
from embedserver.settings import Settings

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


class ServerApp(FastAPI):
    """FastAPI with `layers` (when set) in front of it for HTTP requests; lifespan goes straight in."""

    layers: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.layers is None or scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self  # as Starlette sets it: the lane and the routes read the app's state
        await self.layers(scope, receive, send)

    async def framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app without the layers: the innermost of them hands on here."""
        await super().__call__(scope, receive, send)


def build_app(
    embedder: Embedder,
    settings: Settings,
    *,
    lifespan: Lifespan,
    operations: APIRouter,
    http_metrics: HttpMetrics | None,
    state: ServerState | None = None,
) -> FastAPI:
    """`http_metrics=None` leaves out the HTTP layers (the engine process behind front-ends: they apply them,
    and only their forwarded calls reach its app). `state`: what the operations routes read."""
    app = ServerApp(
        title="embedserver",
        version=__version__,
        default_response_class=JSON,
        lifespan=lifespan,
        docs_url=None,  # install_docs serves /docs from local files
        redoc_url=None,
    )
    app.state.embedder = embedder
    app.state.server = state
    error_handlers.install(app)
    install_docs(app)
    for router in (openai_router, native_router, operations):
        app.include_router(router)
    if state is not None:  # the process that holds the models (a front-end forwards reranking to it)
        app.include_router(rerank_router)
        app.include_router(tokenize_router)
    if http_metrics is not None:
        app.layers = http_layers(app.framework, settings, http_metrics)
    return app
