"""uvicorn's httptools protocol with a deadline on request headers.

uvicorn bounds idle kept-alive connections but not a request's headers: a client that connects and sends
nothing, or one header byte at a time, holds its connection (and a file descriptor) forever. Here the headers
must be complete within HEADER_TIMEOUT_S of the connection opening, or of a kept-alive request's first byte;
otherwise the client gets a 408 and the connection is closed. Bodies have their own deadline
(embedserver/api/body.py).
"""

from __future__ import annotations

import asyncio

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

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expired(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.write(expired_response)
                self.transport.close()

    return HeaderDeadlineProtocol
