"""What the HTTP application costs a request, in-process (no sockets, no client): a cached single-text request
to the whole app (`create_app`, every HTTP layer), answered by the fast lane (`content-type: application/json`)
or by FastAPI's route (the same body as `application/vnd.api+json`, which FastAPI reads as JSON and the lane
leaves to the app).

    HF_HUB_OFFLINE=1 python -m benchmarks.asgi_overhead MODEL_DIR [REQUESTS]

The text is in the cache after the first request, so the figures are the HTTP side, validation, the service's
cache lookup and the response, without tokenization or a forward pass.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from embedserver.runtime.device import hard_exit
from embedserver.server.engine_app import create_app
from embedserver.settings import Settings

BODY = b'{"input": "what the HTTP side costs a cached request", "encoding_format": "base64"}'


async def _per_request_us(app: Any, headers: list[tuple[bytes, bytes]], requests: int) -> float:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/embeddings",
        "raw_path": b"/v1/embeddings",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"localhost"), (b"content-length", str(len(BODY)).encode()), *headers],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }
    statuses: list[int] = []
    bodies: list[bytes] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
        elif message["type"] == "http.response.body" and len(bodies) < 1:
            bodies.append(message.get("body", b""))

    async def one() -> None:
        await app(dict(scope), receive, send)

    for _ in range(200):
        await one()
    started = time.perf_counter()
    for _ in range(requests):
        await one()
    elapsed = time.perf_counter() - started
    assert set(statuses) == {200}, (set(statuses), bodies[-1:])
    return elapsed / requests * 1e6


async def main() -> None:
    model, requests = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    app = create_app(Settings(_env_file=None, model_name=model))  # type: ignore[call-arg]
    async with app.router.lifespan_context(app):
        await app.state.startup
        for _ in range(3):
            lane = await _per_request_us(app, [(b"content-type", b"application/json")], requests)
            route = await _per_request_us(app, [(b"content-type", b"application/vnd.api+json")], requests)
            print(f"fast lane {lane:.0f} us a request; FastAPI route {route:.0f} us a request")


if __name__ == "__main__":
    asyncio.run(main())
    hard_exit(
        0
    )  # MLX used from its own thread can abort in C++ destructors at exit (embedserver/runtime/device.py)
