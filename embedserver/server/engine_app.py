"""Builds the FastAPI app: settings -> catalog -> registry -> service -> routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI

from embedserver import __version__
from embedserver.api import error_handlers as errors
from embedserver.api.layers import add_http_layers
from embedserver.api.responses import JSON
from embedserver.api.routes_native import router as native_router
from embedserver.api.routes_openai import router as openai_router
from embedserver.api.routes_ops import router as ops_router
from embedserver.api.state import ServerState
from embedserver.batching.worker import BatchLimits
from embedserver.catalog import load_catalog, operator_model
from embedserver.errors import ModelUnavailable
from embedserver.metrics import Metrics
from embedserver.runtime import device
from embedserver.runtime.loader import load_engine
from embedserver.service.cache import EmbeddingCache
from embedserver.service.embeddings import EmbeddingService
from embedserver.service.registry import Loader, ModelRegistry
from embedserver.settings import Settings

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None, *, loader: Loader | None = None, http: bool = True
) -> FastAPI:
    """The whole server in one app. With `http=False` (the engine process behind HTTP_WORKERS front-ends) it
    leaves out the HTTP layers: the front-ends apply them, and only their forwarded calls reach this app."""
    settings = settings or Settings()
    catalog = load_catalog(settings.catalog_file, settings.model_sources)
    explicit = bool(settings.model_name)
    if explicit:
        catalog, spec = operator_model(catalog, settings.model_name)
        default = spec.name
    else:
        default = catalog.default
    metrics = Metrics()
    registry = ModelRegistry(
        catalog,
        default=default,
        max_models=settings.max_models,
        limits=BatchLimits(
            max_size=settings.max_batch_size,
            max_tokens=settings.max_batch_tokens,
            wait_s=settings.batch_wait_ms / 1000,
            max_queue=settings.max_queue_texts,
            max_wait_s=settings.max_queue_wait_s,
        ),
        loader=loader or partial(load_engine, dtype=settings.dtype, cuda_kernels=settings.cuda_kernels),
        executor=device.mlx_executor,
        metrics=metrics,
        tokenize_rounds=settings.tokenizer_rounds,
        compile_forward=settings.compile,
        gpu_workspace_bytes=int(settings.gpu_workspace_gb * (1 << 30)),
    )
    cache = EmbeddingCache(settings.cache_max_entries, settings.cache_max_bytes)
    state = ServerState(service=EmbeddingService(settings, registry, cache, metrics), metrics=metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        device.check_blas()
        # Load in the background: the port opens at once and /health says 503 until the model is ready.
        app.state.startup = asyncio.create_task(_start_default(state, allow_fallback=not explicit))
        try:
            yield
        finally:
            app.state.startup.cancel()
            await registry.close()

    app = FastAPI(
        title="embedserver",
        version=__version__,
        default_response_class=JSON,
        lifespan=lifespan,
    )
    app.state.server = state
    app.state.embedder = state.service
    errors.install(app)
    app.include_router(openai_router)
    app.include_router(native_router)
    app.include_router(ops_router)
    if http:
        add_http_layers(app, settings, metrics)
    return app


async def _start_default(state: ServerState, *, allow_fallback: bool) -> None:
    registry = state.service.registry
    wanted = registry.default
    try:
        await registry.load(wanted)
        return
    except ModelUnavailable as exc:
        reason = exc.message
    fallback = registry.catalog.fallback
    if not allow_fallback or fallback is None or fallback == wanted:
        log.error("default model %s could not be loaded: %s", wanted, reason)
        return
    log.warning(
        "!!! default model %s is unavailable (%s); FALLING BACK to %s. Set MODEL_NAME, or MODEL_SOURCES to a "
        "local copy, to serve the intended model !!!",
        wanted,
        reason,
        fallback,
    )
    state.fallback = {"requested": wanted, "serving": fallback, "reason": reason}
    registry.default = fallback
    try:
        await registry.load(fallback)
    except ModelUnavailable as exc:
        log.error("fallback model %s could not be loaded either: %s", fallback, exc.message)
