"""uvicorn's httptools protocol with a deadline on request headers.

uvicorn bounds idle kept-alive connections but not a request's headers: a client that connects and sends
nothing, or one header byte at a time, holds its connection (and a file descriptor) forever. Here the headers
must be complete within HEADER_TIMEOUT_S of the connection opening, or of a kept-alive request's first byte;
otherwise the client gets a 408 and the connection is closed. Bodies have their own deadline
(embedserver/api/body.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from embedserver.api.errors import error_body


def with_header_deadline(timeout_s: float) -> type[asyncio.Protocol]:
    payload = orjson.dumps(
        error_body(
            f"request headers did not arrive within {timeout_s:g} s (HEADER_TIMEOUT_S)",
            "invalid_request_error",
            code="request_timeout",
        )
    )
    expired_response = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(payload)).encode() + b"\r\nconnection: close\r\n\r\n" + payload
    )

    sweeping = False
    interval = min(1.0, timeout_s / 4)

    def sweep(loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        now = loop.time()
        for conn in list(connections):
            since = getattr(conn, "_waiting_since", None)
            if since is not None and now - since > timeout_s:
                conn._expired()
        loop.call_later(interval, sweep, loop, connections)

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        # When this connection began waiting for a request's headers; None while a request is being served
        # or the connection idles between requests (uvicorn's keep-alive timeout covers that). One sweep a
        # second over all connections, instead of a timer per request, keeps the hot path to two assignments.
        _waiting_since: float | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            nonlocal sweeping
            super().connection_made(transport)
            self._waiting_since = self.loop.time()
            if not sweeping:
                sweeping = True
                self.loop.call_later(interval, sweep, self.loop, self.connections)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._waiting_since is None:
                self._waiting_since = self.loop.time()

        def on_headers_complete(self) -> None:
            self._waiting_since = None
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._waiting_since = None
            super().connection_lost(exc)

        def _expired(self) -> None:
            self._waiting_since = None
            if not self.transport.is_closing():
                self.transport.write(expired_response)
                self.transport.close()

    return HeaderDeadlineProtocol
