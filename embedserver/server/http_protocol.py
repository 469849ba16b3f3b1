"""uvicorn's httptools protocol with deadlines for slow clients and cancellation for clients that leave.

uvicorn bounds idle kept-alive connections but not a request's arrival: a client that connects and sends
nothing, or one byte at a time, holds its connection forever. Here
- request headers must be complete within HEADER_TIMEOUT_S of the connection opening (or of a kept-alive
  request's first byte), and the body within BODY_TIMEOUT_S of the headers; otherwise the client gets a 408
  and the connection is closed;
- a client that disconnects before its answer cancels the task serving it (the request registers it in its
  scope, see embedserver/api/body.py), so its queued texts are dropped before they are computed; reading
  resumes once a body is complete, whatever its size, so the close is seen.

All of it costs the hot path a few assignments: one sweep a second over the open connections checks the
deadlines (no timer per request), and disconnects arrive through uvicorn's own connection_lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from embedserver.api.body import GONE_KEY, TASK_KEY
from embedserver.api.error_handlers import error_body


def _timeout_response(message: str) -> bytes:
    payload = orjson.dumps(error_body(message, "invalid_request_error", code="request_timeout"))
    return (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(payload)).encode() + b"\r\nconnection: close\r\n\r\n" + payload
    )


def with_deadlines(
    header_timeout_s: float, body_timeout_s: float, on_body_timeout: Callable[[], None] = lambda: None
) -> type[asyncio.Protocol]:
    header_expired = _timeout_response(
        f"request headers did not arrive within {header_timeout_s:g} s (HEADER_TIMEOUT_S)"
    )
    body_expired = _timeout_response(
        f"the request body did not arrive within {body_timeout_s:g} s (BODY_TIMEOUT_S)"
    )
    interval = min(1.0, header_timeout_s / 4, body_timeout_s / 4)
    sweeping = False

    def sweep(loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        now = loop.time()
        for conn in list(connections):
            if isinstance(conn, DeadlineProtocol):
                conn.check(now)
        loop.call_later(interval, sweep, loop, connections)

    class DeadlineProtocol(HttpToolsProtocol):
        # When this connection began waiting for a request's headers, and when its body began to arrive;
        # None when not waiting (uvicorn's keep-alive timeout covers idle connections between requests).
        _headers_since: float | None = None
        _body_since: float | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            nonlocal sweeping
            super().connection_made(transport)
            self._headers_since = self.loop.time()
            if not sweeping:
                sweeping = True
                self.loop.call_later(interval, sweep, self.loop, self.connections)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._headers_since is None:
                self._headers_since = self.loop.time()

        def on_headers_complete(self) -> None:
            self._headers_since = None
            self._body_since = self.loop.time()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._body_since = None
            super().on_message_complete()
            # uvicorn pauses reading while more than 64 KiB of body waits for the app, and resumes only when
            # the app asks for more. After the last chunk the app never asks again, so a pause made here would
            # last until the answer was sent: the client's close would go unseen and its texts computed for
            # nobody. The body is complete; a pipelined request that follows pauses reading on its own.
            self.flow.resume_reading()

        def connection_lost(self, exc: Exception | None) -> None:
            self._headers_since = self._body_since = None
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                scope: dict[str, Any] = cycle.scope  # type: ignore[assignment]
                task = scope.get(TASK_KEY)
                if isinstance(task, asyncio.Task) and not task.done():
                    scope[GONE_KEY] = True
                    task.cancel()
            super().connection_lost(exc)

        def check(self, now: float) -> None:
            if self._headers_since is not None and now - self._headers_since > header_timeout_s:
                self._expire(header_expired)
            elif self._body_since is not None and now - self._body_since > body_timeout_s:
                on_body_timeout()
                self._expire(body_expired)

        def _expire(self, response: bytes) -> None:
            self._headers_since = self._body_since = None
            if not self.transport.is_closing():
                self.transport.write(response)
                self.transport.close()

    return DeadlineProtocol
