"""POST /tokenize and /detokenize: a model's own tokenizer over HTTP, so clients can cut documents to the
model's limit with the ids the server will count (the special tokens it adds included)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from embedserver.api.responses import JSON
from embedserver.api.schemas import DetokenizeRequest, TokenizeRequest
from embedserver.api.state import state_of
from embedserver.errors import InvalidRequest
from embedserver.service.requests import check_unicode

router = APIRouter()


@router.post("/tokenize", response_class=JSON)
async def tokenize(body: TokenizeRequest, request: Request) -> JSON:
    texts = [body.input] if isinstance(body.input, str) else body.input
    service = state_of(request).service
    if len(texts) > service.settings.max_request_inputs:
        raise InvalidRequest(
            f"at most {service.settings.max_request_inputs} inputs per request (MAX_REQUEST_INPUTS)",
            param="input",
        )
    for index, text in enumerate(texts):
        check_unicode(text, f"input[{index}]", "input")
    async with service.registry.acquire(body.model) as model:
        tokenizer, runner = model.runner.tokenizer, model.runner
        encode = (
            tokenizer.encode_batch
            if body.add_special_tokens and runner.task == "embed"
            else tokenizer.encode_plain
        )
        ids = await asyncio.to_thread(encode, texts)
    data = [{"index": i, "tokens": seq, "count": len(seq)} for i, seq in enumerate(ids)]
    return JSON({"model": runner.name, "max_tokens": runner.max_length, "data": data})


@router.post("/detokenize", response_class=JSON)
async def detokenize(body: DetokenizeRequest, request: Request) -> JSON:
    sequences: list[list[int]] = [body.tokens] if isinstance(body.tokens[0], int) else body.tokens  # type: ignore[list-item]
    async with state_of(request).service.registry.acquire(body.model) as model:
        tokenizer, name = model.runner.tokenizer, model.runner.name
        texts = [tokenizer.decode(seq) for seq in sequences]
    return JSON({"model": name, "data": [{"index": i, "text": text} for i, text in enumerate(texts)]})
