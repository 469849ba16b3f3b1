"""Headers every answer carries, whatever produced it (a route, the fast lane, an error, a refusal before
any route): `x-content-type-options: nosniff`, so a browser never reads a JSON or text body as something
else, and `cache-control: no-store`, since answers hold user data and are never the same resource twice.
uvicorn's `server` header is off (server/http_server.py). Pure ASGI."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_ADDED = ((b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store"))


class ResponseHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                added = [header for header in _ADDED if header[0] not in present]
                if added:
                    message["headers"] = [*message.get("headers", []), *added]
            await send(message)

        await self.app(scope, receive, with_headers)
