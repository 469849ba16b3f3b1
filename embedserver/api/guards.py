"""API keys, checked before any route runs (pure ASGI: nothing is read from the body first)."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from embedserver.api.error_handlers import send_error

# Scope flag: an open path asked for without a valid key. Routes answer it with what anyone may see.
PUBLIC_KEY = "embedserver.public"


class ApiKeys:
    """`Authorization: Bearer <key>` on every path but the open ones, keys compared in constant time."""

    def __init__(self, app: ASGIApp, keys: list[str], open_paths: set[str]) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        if scope["path"] in self.open_paths:
            scope[PUBLIC_KEY] = True
            await self.app(scope, receive, send)
            return
        await send_error(
            send,
            401,
            "missing or invalid API key: send 'Authorization: Bearer <key>'",
            code="invalid_api_key",
            headers=[(b"www-authenticate", b'Bearer realm="embedserver"')],
        )

    def _authorized(self, scope: Scope) -> bool:
        header = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return False
        # Compare against every key (no early exit), so timing does not tell which prefix matched.
        matches = [hmac.compare_digest(token.strip(), key) for key in self.keys]
        return any(matches)
