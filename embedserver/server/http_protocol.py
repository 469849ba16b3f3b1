"""uvicorn's httptools protocol with bounds on what one client can hold: time, header bytes and unread answers.

uvicorn bounds idle kept-alive connections but not a request's arrival, its headers or an answer nobody reads.
Here
- request headers must be complete within HEADER_TIMEOUT_S of the connection opening (or of a kept-alive
  request's first byte), and the body within BODY_TIMEOUT_S of the headers; otherwise 408 and the connection
  closes;
- the request line and headers together may hold MAX_HEADER_BYTES in at most MAX_HEADER_COUNT headers;
  past either, 431 and the connection closes, before any of the request runs (an unterminated header is cut
  as soon as it passes the limit, so it never grows the parser's buffer);
- an answer the client does not read is dropped (the connection aborted) when SEND_TIMEOUT_S passes without
  the client taking any of it, and at once, longest-stalled first, while stalled answers in this process hold
  more than MAX_UNSENT_BYTES;
- a client that disconnects before its answer cancels the task serving it (the request registers it in its
  scope, see embedserver/api/body.py), so its queued texts are dropped before they are computed; reading
  resumes once a body is complete, whatever its size, so the close is seen.

All of it costs the hot path a few assignments: one sweep over the open connections (every second, or more
often for short deadlines) checks the deadlines and the unsent bytes (no timer per request), and disconnects
arrive through uvicorn's own connection_lost. A response's head and body leave in one write
(response_writes.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from embedserver.api.body import GONE_KEY, TASK_KEY
from embedserver.api.error_handlers import error_body
from embedserver.metrics import HttpMetrics
from embedserver.server.response_writes import HeadWithBody
from embedserver.settings import Settings


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    send_timeout_s: float
    max_header_bytes: int
    max_header_count: int
    max_unsent_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            send_timeout_s=settings.send_timeout_s,
            max_header_bytes=settings.max_header_bytes,
            max_header_count=settings.max_header_count,
            max_unsent_bytes=settings.max_unsent_bytes,
        )


def _error_response(status: bytes, message: str, code: str) -> bytes:
    payload = orjson.dumps(error_body(message, "invalid_request_error", code=code))
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(payload)).encode() + b"\r\nconnection: close\r\n\r\n" + payload
    )


class _HeadersTooLarge(Exception):
    """Raised from a parser callback, once the 431 is answered, to stop the parse; uvicorn turns a callback
    error into its 400 path, which the protocol below skips for a refused connection."""


def guarded_protocol(limits: ConnectionLimits, metrics: HttpMetrics) -> type[asyncio.Protocol]:
    header_expired = _error_response(
        b"408 Request Timeout",
        f"request headers did not arrive within {limits.header_timeout_s:g} s (HEADER_TIMEOUT_S)",
        "request_timeout",
    )
    body_expired = _error_response(
        b"408 Request Timeout",
        f"the request body did not arrive within {limits.body_timeout_s:g} s (BODY_TIMEOUT_S)",
        "request_timeout",
    )
    headers_too_large = _error_response(
        b"431 Request Header Fields Too Large",
        f"request headers are limited to {limits.max_header_bytes} bytes (MAX_HEADER_BYTES) "
        f"in {limits.max_header_count} fields (MAX_HEADER_COUNT)",
        "headers_too_large",
    )
    interval = min(1.0, limits.header_timeout_s / 4, limits.body_timeout_s / 4, limits.send_timeout_s / 4)
    sweeping = False

    def sweep(loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        now = loop.time()
        guarded = [conn for conn in connections if isinstance(conn, GuardedProtocol)]
        for conn in guarded:
            conn.check(now)
        _bound_unsent(guarded, now)
        loop.call_later(interval, sweep, loop, connections)

    def _bound_unsent(guarded: list[GuardedProtocol], now: float) -> None:
        # Stalled: the answer was in the buffer at an earlier sweep and the client has taken none of it since.
        stalled = [c for c in guarded if c.unsent and c.unsent_since is not None and c.unsent_since < now]
        held = sum(c.unsent for c in stalled)
        for conn in sorted(stalled, key=lambda c: c.unsent_since or now):
            if held <= limits.max_unsent_bytes:
                break
            held -= conn.unsent
            conn.abort("unsent_bytes")

    class GuardedProtocol(HttpToolsProtocol):
        # When this connection began waiting for a request's headers, and when its body began to arrive;
        # None when not waiting (uvicorn's keep-alive timeout covers idle connections between requests).
        _headers_since: float | None = None
        _body_since: float | None = None
        # Bytes received while a request's headers are incomplete, and the parsed size and count so far.
        _in_headers = True
        _header_bytes = 0
        _header_size = 0
        _header_count = 0
        _refused = False
        # Bytes of answer waiting in the transport, and since when the client has taken none of them.
        unsent = 0
        unsent_since: float | None = None
        # The latest response's writes: its head joins its body in one write (response_writes.py).
        _writes: HeadWithBody | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            nonlocal sweeping
            super().connection_made(transport)
            self._headers_since = self.loop.time()
            if not sweeping:
                sweeping = True
                self.loop.call_later(interval, sweep, self.loop, self.connections)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            counting = self._in_headers
            if counting:
                self._header_bytes += len(data)
            super().data_received(data)
            if counting and self._in_headers and self._header_bytes > limits.max_header_bytes:
                self._refuse_headers()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_size = self._header_count = 0
            if self._headers_since is None:
                self._headers_since = self.loop.time()

        def on_url(self, url: bytes) -> None:
            self._count_header(len(url), 0)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count_header(len(name) + len(value) + 4, 1)
            super().on_header(name, value)

        def _count_header(self, size: int, count: int) -> None:
            self._header_size += size
            self._header_count += count
            if self._header_size > limits.max_header_bytes or self._header_count > limits.max_header_count:
                self._refuse_headers()
                raise _HeadersTooLarge

        def send_400_response(self, msg: str) -> None:
            if not self._refused:  # refused: answered 431 already
                super().send_400_response(msg)

        def _refuse_headers(self) -> None:
            self._refused = True
            self._in_headers = False
            self._headers_since = None
            metrics.connection_closed("headers_too_large")
            if not self.transport.is_closing():
                self.transport.write(headers_too_large)
                self.transport.close()

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._header_bytes = 0
            self._headers_since = None
            self._body_since = self.loop.time()
            before = self.cycle
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not None and cycle is not before:  # a request to answer (not an upgrade)
                if self._writes is not None:
                    self._writes.flush()  # the answer before it comes first, whole
                self._writes = HeadWithBody(self.transport, self.loop)
                cycle.transport = self._writes  # type: ignore[assignment]

        def on_message_complete(self) -> None:
            self._body_since = None
            self._in_headers = True
            super().on_message_complete()
            # uvicorn pauses reading while more than 64 KiB of body waits for the app, and resumes only when
            # the app asks for more. After the last chunk the app never asks again, so a pause made here would
            # last until the answer was sent: the client's close would go unseen and its texts computed for
            # nobody. The body is complete; a pipelined request that follows pauses reading on its own.
            self.flow.resume_reading()

        def connection_lost(self, exc: Exception | None) -> None:
            self._headers_since = self._body_since = None
            self.unsent, self.unsent_since = 0, None
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                scope: dict[str, Any] = cycle.scope  # type: ignore[assignment]
                task = scope.get(TASK_KEY)
                if isinstance(task, asyncio.Task) and not task.done():
                    scope[GONE_KEY] = True
                    task.cancel()
            super().connection_lost(exc)

        def check(self, now: float) -> None:
            if self._headers_since is not None and now - self._headers_since > limits.header_timeout_s:
                self._expire(header_expired)
            elif self._body_since is not None and now - self._body_since > limits.body_timeout_s:
                metrics.body_timeout()
                self._expire(body_expired)
            if self.transport.is_closing():
                return
            buffered = self.transport.get_write_buffer_size()
            if not buffered:
                self.unsent_since = None
            elif self.unsent_since is None or buffered < self.unsent:
                self.unsent_since = now  # new answer, or the client took some: progress
            elif now - self.unsent_since > limits.send_timeout_s:
                self.abort("send_timeout")
                return
            self.unsent = buffered

        def abort(self, reason: str) -> None:
            """Drop the unread answer and the connection (a reset: the client sees that it lost its answer)."""
            metrics.connection_closed(reason)
            self.unsent, self.unsent_since = 0, None
            self.transport.abort()

        def _expire(self, response: bytes) -> None:
            self._headers_since = self._body_since = None
            if not self.transport.is_closing():
                self.transport.write(response)
                self.transport.close()

    return GuardedProtocol
