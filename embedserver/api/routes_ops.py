"""Operations: GET /health, /ready, /models, /v1/models (OpenAI's listing), /metrics. All read the runner
process's state; front-end processes (HTTP_WORKERS) forward these paths to it."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from embedserver import __version__
from embedserver.api.guards import PUBLIC_KEY
from embedserver.api.responses import JSON
from embedserver.api.state import state_of

router = APIRouter()


@router.get("/health", response_class=JSON)
@router.head("/health", response_class=JSON, include_in_schema=False)
async def health(request: Request) -> JSON:
    """200 when the default model can serve; 503 (same body) while it loads or when it failed. With API_KEY
    set, a request without the key gets the status alone: versions, paths, memory and load errors are for
    the operator."""
    state = state_of(request)
    registry = state.service.registry
    slots = registry.slots()
    default = slots.get(registry.default)
    models = {name: slot.describe() for name, slot in slots.items()}
    ready = (
        default is not None and models[registry.default]["status"] == "ready" and state.cold_frontends <= 0
    )
    if request.scope.get(PUBLIC_KEY):
        return JSON({"status": "ok" if ready else "unavailable"}, 200 if ready else 503)
    memory = state.memory()
    uptime = round(time.monotonic() - state.started, 3)
    body = {
        "status": "ok" if ready else "unavailable",
        "default_model": registry.default,
        "embedding_dim": default.runner.dimension if default and default.runner else None,
        "models": models,
        "fallback": state.fallback,
        "device": state.device(),
        "memory": memory,
        "uptime_s": uptime,
        "version": __version__,
        # The seed project's fields, which its clients and dashboards read.
        "model_status": models[registry.default]["status"] if default is not None else "unloaded",
        "model_name": registry.default,
        "memory_usage_mb": round(memory["rss_bytes"] / 2**20, 1),
        "uptime_seconds": uptime,
    }
    return JSON(body, 200 if ready else 503)


@router.get("/ready", response_class=JSON)
@router.head("/ready", response_class=JSON, include_in_schema=False)
async def ready(request: Request) -> JSON:
    """Readiness for a load balancer: 200 only when the default model can serve right now."""
    state = state_of(request)
    status = state.readiness()
    ok = status == "ready"
    return JSON(
        {"ready": ok, "default_model": state.service.registry.default, "status": status}, 200 if ok else 503
    )


def model_cards(request: Request) -> list[dict[str, Any]]:
    state = state_of(request)
    registry = state.service.registry
    slots = registry.slots()
    cards = []
    for name, spec in registry.catalog.models.items():
        slot = slots.get(name)
        runner = slot.runner if slot else None
        cards.append(
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "embedserver",
                "source": spec.source,
                "aliases": list(spec.aliases),
                "task": spec.task,  # "embed": /v1/embeddings; "rerank": /v1/rerank
                "dimension": runner.dimension if runner else spec.dimension,
                "pooling": runner.pooling if runner else spec.pooling,
                "loaded": runner is not None,
                "status": slot.status if slot else "unloaded",
                "default": name == registry.default,
            }
        )
    return cards


@router.get("/models", response_class=JSON)
async def models(request: Request) -> dict[str, Any]:
    state = state_of(request)
    cards = model_cards(request)
    return {
        "object": "list",
        "data": cards,
        "default": state.service.registry.default,
        "fallback": state.fallback,
        # The seed project's fields, which its clients read.
        "models": [card["id"] for card in cards],
        "default_model": state.service.registry.default,
        "loaded_models": [card["id"] for card in cards if card["loaded"]],
    }


@router.get("/v1/models", response_class=JSON)
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": model_cards(request)}


@router.get("/metrics")
@router.head("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(state_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
