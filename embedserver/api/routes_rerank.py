"""Reranking: POST /v1/rerank and /v2/rerank in the shape Cohere and Jina clients send and read, and POST
/rerank, which also takes text-embeddings-inference's shape (`texts`) and answers in it."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import ValidationError

from embedserver.api.request_metrics import note_usage
from embedserver.api.responses import JSON
from embedserver.api.schemas import RerankRequest, TeiRerankRequest
from embedserver.api.state import state_of
from embedserver.errors import InvalidRequest
from embedserver.service.calls import RerankCall

router = APIRouter()


@router.post("/v1/rerank", response_class=JSON)
@router.post("/v2/rerank", response_class=JSON, include_in_schema=False)
async def rerank(body: RerankRequest, request: Request) -> JSON:
    """Documents sorted by relevance to the query: P(yes) of the reranker's judgement."""
    return await _cohere(body, request)


@router.post(
    "/rerank", response_class=JSON, openapi_extra={"requestBody": {"content": {"application/json": {}}}}
)
async def rerank_any_shape(request: Request) -> JSON:
    """Cohere's and Jina's body (`documents`) answered as /v1/rerank is, or text-embeddings-inference's
    (`texts`) answered as it answers: `[{index, score, text?}]`."""
    try:
        data = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from None
    try:
        if isinstance(data, dict) and "texts" in data:
            return await _tei(TeiRerankRequest.model_validate(data), request)
        return await _cohere(RerankRequest.model_validate(data), request)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidRequest(f"{where}: {first['msg']}", param=where or None) from None


async def _cohere(body: RerankRequest, request: Request) -> JSON:
    texts = body.texts()
    call = RerankCall(query=body.query, documents=texts, model=body.model, instruction=body.instruction)
    outcome = await state_of(request).service.rerank(call)
    note_usage(len(call.documents), outcome.tokens)
    results: list[dict[str, Any]] = []
    for index in _best_first(outcome.scores)[: body.top_n]:
        result: dict[str, Any] = {"index": index, "relevance_score": outcome.scores[index]}
        if body.return_documents:
            result["document"] = {"text": texts[index]}
        results.append(result)
    return JSON(
        {
            "id": str(uuid.uuid4()),
            "object": "list",
            "model": outcome.model,
            "results": results,
            "usage": {"total_tokens": outcome.tokens},
            "meta": {"billed_units": {"search_units": 1}},
        }
    )


async def _tei(body: TeiRerankRequest, request: Request) -> JSON:
    call = RerankCall(query=body.query, documents=body.texts, model=body.model, instruction=body.instruction)
    outcome = await state_of(request).service.rerank(call)
    note_usage(len(call.documents), outcome.tokens)
    values = outcome.logits if body.raw_scores else outcome.scores
    answer: list[dict[str, Any]] = []
    for index in _best_first(values):
        item: dict[str, Any] = {"index": index, "score": values[index]}
        if body.return_text:
            item["text"] = body.texts[index]
        answer.append(item)
    return JSON(answer)


def _best_first(values: list[float]) -> list[int]:
    """Indices by value, highest first; ties keep the order the documents came in."""
    return sorted(range(len(values)), key=lambda i: -values[i])
