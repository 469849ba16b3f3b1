"""Reads each request's body before any route runs, then watches the connection while the route works.

- Size: refused with 413 from Content-Length before anything is read, or as soon as a chunked body passes
  MAX_BODY_BYTES.
- Time: the whole body must arrive within BODY_TIMEOUT_S (408 otherwise), so a client trickling bytes cannot
  hold a handler (headers have their own deadline: embedserver/api/protocol.py).
- Disconnects: a client that goes away before its answer cancels its request; the batch worker then skips its
  queued texts (embedserver_dropped_total) and the request is counted here by stage.

Pure ASGI, one task per request beside the route's, so nothing is buffered twice.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedserver.api.errors import send_error
from embedserver.metrics import Metrics

_CLOSE = [(b"connection", b"close")]


class _Refused(Exception):
    """The body was answered (413) or its client left; the route must not run."""


class RequestBody:
    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout_s: float, metrics: Metrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                body = await self._read(scope, receive, send)
        except _Refused:
            return
        except TimeoutError:
            self.metrics.timeouts.inc()
            await send_error(
                send,
                408,
                f"the request body did not arrive within {self.timeout_s:g} s (BODY_TIMEOUT_S)",
                code="request_timeout",
                headers=_CLOSE,
            )
            return
        await self._serve(scope, body, receive, send)

    async def _read(self, scope: Scope, receive: Receive, send: Send) -> bytes:
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._too_large(send)
                raise _Refused
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.metrics.disconnects.labels("body").inc()
                raise _Refused
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send)
                raise _Refused
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, send: Send) -> None:
        await send_error(
            send,
            413,
            f"request body is larger than {self.max_bytes} bytes (MAX_BODY_BYTES)",
            code="request_too_large",
            headers=_CLOSE,
        )

    async def _serve(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()
        delivered = responded = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def tracked_send(message: Message) -> None:
            nonlocal responded
            responded = True
            await send(message)

        route = asyncio.ensure_future(self.app(scope, replay, tracked_send))
        watch = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({route, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not route.done():
                gone.set()
                if not responded:  # nobody will read the answer: stop computing it
                    self.metrics.disconnects.labels("waiting").inc()
                    route.cancel()
                # Wait without re-raising the route's cancellation (ours) or swallowing one aimed at us.
                await asyncio.wait({route})
                return
            await route  # re-raises the route's own exception, if any
        finally:
            watch.cancel()
            route.cancel()


async def _disconnected(receive: Receive) -> None:
    """Returns when the server reports the client gone (uvicorn answers receive() only then, once the body is
    read)."""
    while (await receive())["type"] != "http.disconnect":
        pass
