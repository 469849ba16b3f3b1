"""Reads each request's body before any route runs, then watches the connection while the route works.

- Size: refused with 413 from Content-Length before anything is read, or as soon as a chunked body passes
  MAX_BODY_BYTES.
- Time: the whole body must arrive within BODY_TIMEOUT_S (408 otherwise), so a client trickling bytes cannot
  hold a handler (headers have their own deadline: embedserver/api/protocol.py).
- Disconnects: a client that goes away before its answer (noticed from 20 ms into the request on) cancels
  its request; the batch worker then skips its queued texts (embedserver_dropped_total), and the request is
  counted here by stage.

Pure ASGI, so nothing is buffered twice; a watcher task only for requests still running after 20 ms.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedserver.api.errors import send_error
from embedserver.metrics import Metrics

_CLOSE = [(b"connection", b"close")]
_WATCH_AFTER_S = 0.02


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
        # The route runs in this task (no second one per request); a watcher cancels it if the client leaves.
        task = asyncio.current_task()
        assert task is not None
        gone = asyncio.Event()
        delivered = responded = finished = left = False

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

        def client_left(watch: asyncio.Future[None]) -> None:
            nonlocal left
            if finished or watch.cancelled() or watch.exception() is not None:
                return
            gone.set()
            if not responded:  # nobody will read the answer: stop computing it
                left = True
                self.metrics.disconnects.labels("waiting").inc()
                task.cancel()

        watch: asyncio.Task[None] | None = None

        def start_watching() -> None:
            nonlocal watch
            watch = asyncio.ensure_future(_disconnected(receive))
            watch.add_done_callback(client_left)

        # Most answers come back within milliseconds (cache hits, light load); only a request still running
        # after _WATCH_AFTER_S gets a watcher task, so the fast path pays for one timer, not one task.
        timer = asyncio.get_running_loop().call_later(_WATCH_AFTER_S, start_watching)
        try:
            await self.app(scope, replay, tracked_send)
        except asyncio.CancelledError:
            if left and task.uncancel() == 0:
                return  # our own cancellation: the client is gone, there is no one to answer
            raise
        finally:
            finished = True
            timer.cancel()
            if watch is not None:
                watch.cancel()


async def _disconnected(receive: Receive) -> None:
    """Returns when the server reports the client gone (uvicorn answers receive() only then, once the body is
    read)."""
    while (await receive())["type"] != "http.disconnect":
        pass
