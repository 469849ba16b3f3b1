"""The embedding routes' common case without the framework in between.

A POST to /v1/embeddings, /embed or /embed_batch with a JSON body that parses and validates is answered here,
by the same functions the routes call, without FastAPI's routing, dependency resolution, body parsing and
validation, which are about half of what a cached request costs the whole app (`python -m
benchmarks.asgi_overhead MODEL_DIR` measures both paths). Everything else goes to the app unchanged: other paths and methods, other content
types, and any body that does not parse (orjson) or validate (the same pydantic model, in the same Python
mode as FastAPI's) is replayed to the app, so every error keeps exactly the status, shape and wording the
routes give it. Errors the service raises are rendered by the app's own handler function, and anything else
gets the app's 500 (logged with its traceback), as a route's would.

The innermost HTTP layer: the body limit, API keys, the Host check, request metrics and CORS all run before
it, and the framework (embedserver/api/app.py) only after it, for what it does not answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedserver.api.error_handlers import api_error_response, internal_error
from embedserver.api.responses import JSON
from embedserver.api.routes_native import embed_many, embed_one
from embedserver.api.routes_openai import embeddings
from embedserver.api.schemas import EmbedBatchRequest, EmbeddingRequest, EmbedRequest
from embedserver.api.state import Embedder
from embedserver.errors import APIError

Answer = Callable[[Any, Embedder], Awaitable[JSON]]

ROUTES: dict[str, tuple[type[BaseModel], Answer]] = {
    "/v1/embeddings": (EmbeddingRequest, embeddings),
    "/embed": (EmbedRequest, embed_one),
    "/embed_batch": (EmbedBatchRequest, embed_many),
}


@dataclass(frozen=True)
class LaneRoute:
    """What a request answered here puts in its scope as "route", as the router's route would: the request
    metrics label requests by its path."""

    path: str


_ROUTE_LABELS = {path: LaneRoute(path) for path in ROUTES}


class FastLane:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        entry = ROUTES.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if entry is None or not _json_content(scope):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        body = self._parse(entry[0], messages)
        if body is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        scope["route"] = _ROUTE_LABELS[scope["path"]]
        embedder: Embedder = scope["app"].state.embedder
        try:
            response = await entry[1](body, embedder)
        except APIError as exc:
            response = api_error_response(exc, scope["path"])
        except Exception:
            response = internal_error()
        await response(scope, receive, send)

    @staticmethod
    def _parse(model: type[BaseModel], messages: list[Message]) -> BaseModel | None:
        if messages[-1]["type"] != "http.request":
            return None  # the client left, or the body limit refused it: the app answers as it always has
        try:
            return model.model_validate(orjson.loads(b"".join(m.get("body", b"") for m in messages)))
        except (orjson.JSONDecodeError, ValidationError):
            return None


def _json_content(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bool(value.split(b";", 1)[0].strip().lower() == b"application/json")
    return False


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """The body messages already read, then the connection's own."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
