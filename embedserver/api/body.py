"""Request bodies: refused past MAX_BODY_BYTES (413), from Content-Length before anything is read, and for
chunked bodies as soon as they pass the limit. Pure ASGI (no buffering), so an oversized body costs nothing.

Also the app's half of disconnect handling: the request registers its task in the scope, and when the HTTP
protocol (embedserver/server/http_protocol.py) sees the client leave before the answer, it cancels that task; the
cancellation is absorbed here and counted, and the batch worker skips the request's queued texts
(embedserver_dropped_total). Deadlines for slow bodies live in the protocol too.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedserver.api.error_handlers import send_error
from embedserver.errors import shutting_down
from embedserver.metrics import HttpMetrics

# Scope keys the HTTP protocol reads: the task serving the request, and whether its client has gone.
TASK_KEY = "embedserver.task"
GONE_KEY = "embedserver.client_gone"


class RequestBody:
    def __init__(self, app: ASGIApp, *, max_bytes: int, metrics: HttpMetrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._too_large(send)
                return
            if name == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
                # Read as if it were not compressed it would be garbage, or worse, a different request.
                shown = value[:40].decode("latin-1")
                await send_error(
                    send,
                    415,
                    f"content-encoding {shown!r} is not supported: send the body uncompressed",
                    code="unsupported_content_encoding",
                )
                return
        task = asyncio.current_task()
        scope[TASK_KEY] = task
        received = 0
        started = refused = read = False

        async def limited_receive() -> Message:
            nonlocal received, refused, read
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                read = not message.get("more_body", False)
                if received > self.max_bytes and not refused:
                    refused = True
                    if not started:
                        await self._too_large(send)
                    # The app sees a client that went away and stops reading; its own answer is dropped.
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except asyncio.CancelledError:
            assert task is not None
            if scope.get(GONE_KEY) and task.uncancel() == 0:
                # Cancelled by the protocol because the client left: nobody to answer.
                self.metrics.client_gone("waiting" if read else "body")
                return
            if not started and not refused and task.uncancel() == 0:
                # Cancelled by uvicorn when the shutdown grace ran out: the client is still there and gets a
                # clear answer, not a 500 and a traceback.
                error = shutting_down()
                await send_error(
                    send,
                    error.status,
                    error.message,
                    code=error.code or "shutting_down",
                    headers=[(b"connection", b"close")],
                    kind=error.type,
                )
                return
            raise

    async def _too_large(self, send: Send) -> None:
        await send_error(
            send,
            413,
            f"request body is larger than {self.max_bytes} bytes (MAX_BODY_BYTES)",
            code="request_too_large",
            headers=[(b"connection", b"close")],
        )
