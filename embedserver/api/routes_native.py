"""embedserver's native API: POST /embed and POST /embed_batch (validation errors answer 422 here)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from embedserver.api.request_metrics import note_usage
from embedserver.api.responses import JSON
from embedserver.api.schemas import EmbedBatchRequest, EmbedRequest
from embedserver.api.state import Embedder, embedder_of
from embedserver.service.calls import EmbedOutcome

router = APIRouter()


@router.post("/embed", response_class=JSON)
async def embed(body: EmbedRequest, request: Request) -> JSON:
    return await embed_one(body, embedder_of(request))


@router.post("/embed_batch", response_class=JSON)
async def embed_batch(body: EmbedBatchRequest, request: Request) -> JSON:
    return await embed_many(body, embedder_of(request))


async def embed_one(body: EmbedRequest, embedder: Embedder) -> JSON:
    """The /embed answer; also given by the fast lane (embedserver/api/fast_lane.py)."""
    started = time.perf_counter()
    outcome = await embedder.embed(body.call([body.text]))
    return JSON(
        {
            "embedding": outcome.vectors[0],
            "cached": outcome.cached[0],
            **_common(outcome, body.normalize, started),
        }
    )


async def embed_many(body: EmbedBatchRequest, embedder: Embedder) -> JSON:
    """The /embed_batch answer; also given by the fast lane."""
    started = time.perf_counter()
    outcome = await embedder.embed(body.call(body.texts))
    return JSON(
        {
            "embeddings": outcome.vectors,
            "count": len(body.texts),
            "cached": outcome.cached,
            **_common(outcome, body.normalize, started),
        }
    )


def _common(outcome: EmbedOutcome, normalized: bool, started: float) -> dict[str, Any]:
    note_usage(len(outcome.vectors), outcome.tokens)
    return {
        "model": outcome.model,
        "dim": int(outcome.vectors.shape[1]),
        "normalized": normalized,
        "tokens": outcome.tokens,
        "processing_time_ms": round((time.perf_counter() - started) * 1000, 3),
    }
