"""The one place the FastAPI app is put together, whatever the process layout: the embedding routes in
front of an Embedder (the service itself, or a front-end's link to it), the operations routes the process
serves, error rendering, and the HTTP layers."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from fastapi import APIRouter, FastAPI

from embedserver import __version__
from embedserver.api import error_handlers
from embedserver.api.docs import install_docs
from embedserver.api.layers import add_http_layers
from embedserver.api.responses import JSON
from embedserver.api.routes_native import router as native_router
from embedserver.api.routes_openai import router as openai_router
from embedserver.api.routes_rerank import router as rerank_router
from embedserver.api.routes_tokenize import router as tokenize_router
from embedserver.api.state import Embedder, ServerState
from embedserver.metrics import HttpMetrics
from embedserver.settings import Settings

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


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
    app = FastAPI(
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
        add_http_layers(app, settings, http_metrics)
    return app
