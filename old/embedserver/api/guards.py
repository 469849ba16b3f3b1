"""ASGI guards that run before any route: request body size and API keys.

Pure ASGI (no body buffering), so an oversized body is refused from its Content-Length before it is read, and
a chunked one as soon as it passes the limit.
"""

from __future__ import annotations

import hmac

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedserver.api.errors import error_body


async def _reply(
    send: Send, status: int, body: dict[str, object], headers: list[tuple[bytes, bytes]]
) -> None:
    payload = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._refuse(send)
                return
        received = 0
        started = refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes and not refused:
                    refused = True
                    if not started:
                        await self._refuse(send)
                    # The app sees a client that went away and stops reading; its own answer is dropped.
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _refuse(self, send: Send) -> None:
        body = error_body(
            f"request body is larger than {self.max_bytes} bytes (MAX_BODY_BYTES)",
            "invalid_request_error",
            code="request_too_large",
        )
        await _reply(send, 413, body, [(b"connection", b"close")])


class ApiKeys:
    """`Authorization: Bearer <key>` on every path but the open ones, keys compared in constant time."""

    def __init__(self, app: ASGIApp, keys: list[str], open_paths: set[str]) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        body = error_body(
            "missing or invalid API key: send 'Authorization: Bearer <key>'",
            "invalid_request_error",
            code="invalid_api_key",
        )
        await _reply(send, 401, body, [(b"www-authenticate", b'Bearer realm="embedserver"')])

    def _authorized(self, scope: Scope) -> bool:
        header = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return False
        # Compare against every key (no early exit), so timing does not tell which prefix matched.
        matches = [hmac.compare_digest(token.strip(), key) for key in self.keys]
        return any(matches)
