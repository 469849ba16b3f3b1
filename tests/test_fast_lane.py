"""The fast lane answers valid embedding requests itself and hands everything else, body intact, to the app."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from embedserver.api.fast_lane import FastLane
from embedserver.errors import InvalidRequest, Overloaded
from embedserver.service.calls import EmbedCall, EmbedOutcome


class Embedder:
    """Vectors that say which call they answer: row i is [i, len(text i), 0, ...]."""

    draining = False

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[EmbedCall] = []
        self.error = error

    async def embed(self, call: EmbedCall) -> EmbedOutcome:
        self.calls.append(call)
        if self.error is not None:
            raise self.error
        vectors = np.zeros((len(call.inputs), 4), dtype=np.float32)
        for row, text in enumerate(call.inputs):
            vectors[row, :2] = row, len(text)
        return EmbedOutcome(model="fake", vectors=vectors, tokens=7, cached=[False] * len(call.inputs))


class App:
    """The app behind the lane: records what reaches it, reads the whole body, answers 299."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.seen.append((scope["method"], scope["path"], body))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})


async def _call(
    lane: FastLane,
    embedder: Embedder,
    path: str,
    chunks: list[bytes],
    *,
    method: str = "POST",
    content_type: bytes | None = b"application/json",
) -> tuple[int, dict[str, str], bytes, dict[str, Any]]:
    headers = [(b"content-type", content_type)] if content_type is not None else []
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": headers,
        "app": SimpleNamespace(state=SimpleNamespace(embedder=embedder)),
    }
    messages = [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks)
    ]
    sent: list[Message] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await lane(scope, receive, send)
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    headers_out = {k.decode(): v.decode() for k, v in start.get("headers", [])}
    return start["status"], headers_out, body, scope


async def test_valid_requests_are_answered_without_the_app() -> None:
    app, embedder = App(), Embedder()
    lane = FastLane(app)
    status, headers, body, scope = await _call(
        lane, embedder, "/v1/embeddings", [b'{"input": ["ab", "abc"], ', b'"dimensions": 2}']
    )
    assert status == 200 and headers["content-type"] == "application/json"
    answer = orjson.loads(body)
    assert [d["embedding"] for d in answer["data"]] == [[0, 2, 0, 0], [1, 3, 0, 0]]
    assert answer["usage"] == {"prompt_tokens": 7, "total_tokens": 7} and answer["model"] == "fake"
    assert embedder.calls[0].inputs == ["ab", "abc"] and embedder.calls[0].dimensions == 2
    assert scope["route"].path == "/v1/embeddings"  # the request metrics' label

    status, _, body, _ = await _call(lane, embedder, "/embed", [b'{"text": "hello"}'])
    assert status == 200 and orjson.loads(body)["embedding"] == [0, 5, 0, 0]
    status, _, body, _ = await _call(lane, embedder, "/embed_batch", [b'{"texts": ["a", "bb"]}'])
    assert status == 200 and orjson.loads(body)["count"] == 2
    assert app.seen == []


@pytest.mark.parametrize(
    ("path", "chunks", "method", "content_type"),
    [
        ("/v1/embeddings", [b'{"input": '], "POST", b"application/json"),  # not JSON
        ("/v1/embeddings", [b'{"input": 5}'], "POST", b"application/json"),  # does not validate
        ("/v1/embeddings", [b'{"input": "x", "dimensions": NaN}'], "POST", b"application/json"),
        ("/embed", [b'{"text": ""}'], "POST", b"application/json"),
        ("/embed_batch", [b'{"texts": []}'], "POST", b"application/json"),
        ("/v1/embeddings", [b'{"input": "x"}'], "POST", b"text/plain"),  # the app decides
        ("/v1/embeddings", [b'{"input": "x"}'], "POST", None),
        ("/v1/embeddings", [b""], "GET", b"application/json"),
        ("/health", [b'{"input": "x"}'], "POST", b"application/json"),
    ],
)
async def test_everything_else_reaches_the_app_with_its_body(
    path: str, chunks: list[bytes], method: str, content_type: bytes | None
) -> None:
    app, embedder = App(), Embedder()
    status, _, body, _ = await _call(
        FastLane(app), embedder, path, chunks, method=method, content_type=content_type
    )
    assert (status, body) == (299, b"app")
    assert app.seen == [(method, path, b"".join(chunks))]
    assert embedder.calls == []


async def test_service_errors_get_the_routes_statuses_and_bodies() -> None:
    lane = FastLane(App())
    error = InvalidRequest("input[0] is empty or whitespace only", param="input")
    status, _, body, _ = await _call(lane, Embedder(error), "/v1/embeddings", [b'{"input": " "}'])
    assert status == 400 and orjson.loads(body)["error"]["param"] == "input"
    status, _, body, _ = await _call(lane, Embedder(error), "/embed", [b'{"text": " "}'])
    assert status == 422  # the native API's input errors
    busy = Overloaded("model is busy; retry later", headers={"Retry-After": "3"})
    status, headers, body, _ = await _call(lane, Embedder(busy), "/v1/embeddings", [b'{"input": "x"}'])
    assert status == 429 and headers["retry-after"] == "3"
    assert orjson.loads(body)["error"]["message"] == "model is busy; retry later"


async def test_unexpected_errors_get_the_apps_500_and_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    status, headers, body, _ = await _call(
        FastLane(App()), Embedder(RuntimeError("bug")), "/v1/embeddings", [b'{"input": "x"}']
    )
    assert status == 500 and headers["content-type"] == "application/json"
    assert orjson.loads(body) == {
        "error": {"message": "internal server error", "type": "server_error", "param": None, "code": None}
    }
    [record] = [r for r in caplog.records if r.message == "unhandled error"]
    assert record.exc_info is not None and "bug" in str(record.exc_info[1])
