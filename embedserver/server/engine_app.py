"""The engine process's app (the composition root): settings -> catalog -> registry -> service -> app.

The engine owns MLX, the models, the cache and the batch queues. Alone (HTTP_WORKERS=0) its app serves HTTP
itself; behind front-end processes only their forwarded calls reach it (embedserver/server/engine_link.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI

from embedserver.api.app import build_app
from embedserver.api.routes_ops import router as ops_router
from embedserver.api.state import ServerState
from embedserver.batching.limits import BatchLimits
from embedserver.catalog import ModelSpec, load_catalog, operator_model
from embedserver.errors import APIError
from embedserver.metrics import Metrics
from embedserver.runtime import device
from embedserver.runtime.device_policy import DevicePlan, ready_for_device_steps
from embedserver.runtime.load_steps import LoadSteps
from embedserver.runtime.loader import load_runner_steps
from embedserver.runtime.model_files import ModelFiles, resolve_source
from embedserver.runtime.runner import ModelRunner
from embedserver.server.model_process import start_model_process
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
            max_request_tokens=settings.max_request_tokens,
            max_queue_tokens=settings.max_queue_tokens,
        ),
        loader=loader or partial(start_model_process if settings.model_process else load_model, settings),
        fetch=partial(_fetch, settings),
        download_on_request=settings.download_on_request,
        executor=device.mlx_executor(),
        metrics=metrics,
        tokenize_rounds=settings.tokenizer_rounds,
    )
    cache = EmbeddingCache(settings.cache_max_entries, settings.cache_max_bytes)
    service = EmbeddingService(settings, registry, cache, metrics)
    state = ServerState(
        service=service, metrics=metrics, device=device.info, memory=partial(_memory, registry)
    )
    metrics.ready.set_function(lambda: float(state.readiness() == "ready"))  # read at scrape time

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        device.check_blas()
        # Load in the background: the port opens at once and /health says 503 until the model is ready.
        app.state.startup = asyncio.create_task(
            _start(state, allow_fallback=not explicit, reranker=settings.rerank_model)
        )
        try:
            yield
        finally:
            app.state.startup.cancel()
            await registry.close()

    app = build_app(
        service,
        settings,
        lifespan=lifespan,
        operations=ops_router,
        http_metrics=metrics if http else None,
        state=state,
    )
    return app


def _memory(registry: ModelRegistry) -> dict[str, int]:
    """This process's memory, with that of its models' processes (MODEL_PROCESS) as each last reported it
    added: what the server holds in all."""
    total = device.memory()
    for slot in registry.slots().values():
        for key, value in getattr(slot.runner, "memory", {}).items():
            total[key] = total.get(key, 0) + value
    return total


def _fetch(settings: Settings, spec: ModelSpec, download: bool) -> ModelFiles:
    return resolve_source(spec.source, download=download, stall_s=settings.download_stall_s)


def device_plan(settings: Settings) -> DevicePlan:
    """What a model is readied for, from the server's settings (also how the benchmarks ready the model alone)."""
    return DevicePlan(
        max_batch=settings.max_batch_size,
        max_tokens=settings.max_batch_tokens,
        compile_forward=settings.compile,
        gpu_workspace_bytes=int(settings.gpu_workspace_gb * (1 << 30)),
    )


def load_model(settings: Settings, spec: ModelSpec, files: ModelFiles) -> LoadSteps[ModelRunner]:
    """A model loaded and readied for this device, as steps (runtime/load_steps.py): the registry runs them
    on the MLX thread with other models' passes between them; the tokenizer builds on a thread of its own."""
    plan = device_plan(settings)
    runner = yield from load_runner_steps(
        spec,
        files,
        dtype=settings.dtype,
        cuda_kernels=settings.cuda_kernels,
        fast_tokenizer=settings.fast_tokenizer,
    )
    return (yield from ready_for_device_steps(runner, plan))


async def _start(state: ServerState, *, allow_fallback: bool, reranker: str | None) -> None:
    """The default model, then the reranker the operator named (RERANK_MODEL), if any."""
    await _start_default(state, allow_fallback=allow_fallback)
    if reranker:
        try:
            await state.service.registry.load(reranker)
        except APIError as exc:
            log.error("reranker %s could not be loaded: %s", reranker, exc.message)


async def _start_default(state: ServerState, *, allow_fallback: bool) -> None:
    registry = state.service.registry
    wanted = registry.default
    try:
        await registry.load(wanted)
        return
    except APIError as exc:  # unavailable, or not downloaded where the hub is out of reach
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
    except APIError as exc:
        log.error("fallback model %s could not be loaded either: %s", fallback, exc.message)
