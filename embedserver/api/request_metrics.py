"""What each request did, for every route (pure ASGI: no body buffering): its count and duration by endpoint
and status, its `x-request-id`, and one access-log line (method, path, status, duration, texts, tokens, request
id; never the input), plus rate-limited warnings when requests are refused for overload or abandoned. The
outermost layer but CORS, so refusals by the others (Host, keys, body) are counted, logged and carry the
headers every answer carries (headers.py)."""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedserver.api.headers import stamped
from embedserver.logs import EveryFewSeconds, log_access
from embedserver.metrics import HttpMetrics

access = logging.getLogger("embedserver.access")
_warnings = EveryFewSeconds(logging.getLogger("embedserver.load"))

# The routes note what a request computed here (texts, tokens) for its access-log line. A list set by the
# layer and filled by the route: the route may run in a task of its own, whose context is a copy.
_USAGE: ContextVar[list[int] | None] = ContextVar("embedserver_usage", default=None)
# A client's own id is kept when it is short and plain; otherwise one is made: this process's random prefix
# and its count of requests, 16 hex digits (unique across processes and restarts without a system call each).
_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
_ID_PREFIX: str
_ids: itertools.count[int]


def _new_prefix() -> None:
    global _ID_PREFIX, _ids
    _ID_PREFIX, _ids = os.urandom(4).hex(), itertools.count()


_new_prefix()
os.register_at_fork(after_in_child=_new_prefix)  # a forked process makes ids of its own


def note_usage(texts: int, tokens: int) -> None:
    holder = _USAGE.get()
    if holder is not None:
        holder[:] = [texts, tokens]


class RequestMetrics:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics, access_log: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        usage: list[int] = []
        token = _USAGE.set(usage)
        # No answer at all means the client went away first (nginx's 499).
        status = 499

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": stamped(message.get("headers", []), request_id)}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            # The framework's 500, already sent through send_wrapper and raised again, or a layer's error
            # before any answer, which uvicorn answers.
            status = 500
            raise
        finally:
            _USAGE.reset(token)
            seconds = time.perf_counter() - started
            route = scope.get("route")
            # The route template, not the raw path, so unknown URLs cannot blow up label cardinality.
            endpoint = getattr(route, "path", "unmatched")
            self.metrics.request_done(endpoint, status, seconds)
            if self.access_log:
                _log(scope, status, seconds, usage, request_id.decode())
            if status == 429:
                _warnings.warn(
                    "429", "requests refused with 429: the model's queue is full or too slow to clear"
                )
            elif status == 499:
                _warnings.warn(
                    "499", "clients went away before their answer (timeouts shorter than the wait?)"
                )


def _request_id(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == b"x-request-id" and _CLIENT_ID.fullmatch(value):
            return bytes(value)
    return f"{_ID_PREFIX}{next(_ids) & 0xFFFFFFFF:08x}".encode()


def _log(scope: Scope, status: int, seconds: float, usage: list[int], request_id: str) -> None:
    method, path = scope["method"], scope["path"][:200]
    texts, tokens = usage if usage else (None, None)
    counted = f" texts={texts} tokens={tokens}" if usage else ""
    log_access(
        access,
        f"{method} {path} {status} {seconds * 1000:.1f}ms{counted} id={request_id}",
        {
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
            "texts": texts,
            "tokens": tokens,
            "request_id": request_id,
        },
    )
