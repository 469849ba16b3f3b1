"""Request counts and durations by endpoint and status, for every route (pure ASGI: no body buffering)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedserver.metrics import HttpMetrics


class RequestMetrics:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # No answer at all means the client went away first (nginx's 499).
        status = 499

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            status = 500  # answered by Starlette's outermost error handler, after this middleware
            raise
        finally:
            route = scope.get("route")
            # The route template, not the raw path, so unknown URLs cannot blow up label cardinality.
            endpoint = getattr(route, "path", "unmatched")
            self.metrics.request_done(endpoint, status, time.perf_counter() - started)
