"""OpenAI-compatible API: POST /v1/embeddings (GET /v1/models lives with the operations routes)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from embedserver.api.request_metrics import note_usage
from embedserver.api.responses import JSON, to_base64
from embedserver.api.schemas import EmbeddingRequest
from embedserver.api.state import Embedder, embedder_of

router = APIRouter()


@router.post("/v1/embeddings", response_class=JSON)
async def create_embeddings(body: EmbeddingRequest, request: Request) -> JSON:
    return await embeddings(body, embedder_of(request))


async def embeddings(body: EmbeddingRequest, embedder: Embedder) -> JSON:
    """The route's answer; also given by the fast lane (embedserver/api/fast_lane.py)."""
    raw = body.input
    # One text or one token-id list is a request of one input.
    inputs: list[str] | list[list[int]]
    if isinstance(raw, str):
        inputs = [raw]
    elif raw and isinstance(raw[0], int):
        inputs = [raw]  # type: ignore[list-item]
    else:
        inputs = raw  # type: ignore[assignment]
    outcome = await embedder.embed(body.call(inputs, openai_ids=True))
    note_usage(len(inputs), outcome.tokens)
    encode = to_base64 if body.encoding_format == "base64" else (lambda v: v)
    data = [
        {"object": "embedding", "index": index, "embedding": encode(vector)}
        for index, vector in enumerate(outcome.vectors)
    ]
    return JSON(
        {
            "object": "list",
            "data": data,
            "model": outcome.model,
            "usage": {"prompt_tokens": outcome.tokens, "total_tokens": outcome.tokens},
        }
    )
