"""The engine process's end of the front-end link (HTTP_WORKERS): one connection per front-end process.

DESCRIBE frames answer what a front-end needs to prepare requests for a model (embedserver/service/requests.py),
loading it if needed. EMBEDS frames carry the requests a front-end validated and tokenized in one turn of its
loop (each an EMBED call: token ids and cache keys), which go through the same cache, admission and batching
as in one process (the texts of every front-end meet in one batch queue per model); the answers are the raw
pooled vectors, one buffer for all of a turn's. CANCEL cancels a call, which drops its queued texts; ROUTE
runs an operations route on this process's app; RECORD adds a front-end's HTTP metrics to this process's, so
/metrics shows every process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import asdict
from functools import partial
from typing import Any

import numpy as np
from fastapi import FastAPI
from starlette.types import Message, Scope

from embedserver.api.guards import PUBLIC_KEY
from embedserver.api.state import ServerState
from embedserver.errors import APIError
from embedserver.metrics import observe_many
from embedserver.server import ipc
from embedserver.service.embeddings import Cancellable
from embedserver.service.requests import PreparedRequest

log = logging.getLogger(__name__)


class EngineLink(ipc.FrameProtocol):
    def __init__(self, app: FastAPI) -> None:
        super().__init__()
        self.app = app
        state: ServerState = app.state.server
        self.state = state
        self.service = state.service
        self.metrics = state.metrics
        # Calls in progress, by id: tasks, or the handles of requests started without one (`_start`).
        self._calls: dict[int, Cancellable] = {}
        # Answers of this loop turn, sent as one RESULTS frame at its end (a batch answers many requests).
        self._results: list[tuple[int, np.ndarray, list[bool]]] = []
        # When each embedding call's frame arrived, for embedserver_engine_call_seconds.
        self._arrived: dict[int, float] = {}

    def frame_received(self, kind: int, id_: int, meta: Any, payload: bytes) -> None:
        if kind == ipc.EMBEDS:  # the hot path: a front-end's requests of one turn, started in one go
            arrived, now = self._arrived, time.perf_counter()
            for call_id, request in ipc.unpack_embeds(meta, payload):
                arrived[call_id] = now
                if not self._start(call_id, request):
                    self._call(call_id, self._embed(call_id, request))
        elif kind == ipc.DESCRIBE:
            self._call(id_, self._describe(id_, meta["model"]))
        elif kind == ipc.ROUTE:
            route = self._route(
                id_, meta["path"], meta.get("method", "GET"), payload, public=bool(meta.get("public"))
            )
            self._call(id_, route)
        elif kind == ipc.CANCEL:
            running = self._calls.pop(id_, None)
            self._arrived.pop(id_, None)
            if running is not None:
                running.cancel()
        elif kind == ipc.RECORD:
            for event in meta:
                self._record(event)

    def _call(self, id_: int, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._calls[id_] = task
        task.add_done_callback(lambda _: self._calls.pop(id_, None))

    def connection_lost(self, exc: Exception | None) -> None:
        # The front-end is gone, and with it everyone waiting on these calls.
        for call in list(self._calls.values()):
            call.cancel()
        self._arrived.clear()

    def _start(self, id_: int, request: PreparedRequest) -> bool:
        """Start a request on a ready model without a task (the common case under load); False when the
        model must load first, which a task waits for."""
        try:
            started = self.service.start_prepared(request, partial(self._answer, id_))
        except APIError as exc:
            self._send_error(id_, exc)
            return True
        if started is None:
            return False
        self._calls[id_] = started
        return True

    def _answer(self, id_: int, outcome: tuple[np.ndarray, list[bool]] | BaseException) -> None:
        self._calls.pop(id_, None)
        if isinstance(outcome, APIError):
            self._send_error(id_, outcome)
        elif isinstance(outcome, BaseException):
            log.error("embedding request failed", exc_info=outcome)
            self._send_error(id_, APIError("internal server error"))
        else:
            raw, cached = outcome
            self._send_vectors(id_, raw, cached)

    def _send_vectors(self, id_: int, raw: np.ndarray, cached: list[bool]) -> None:
        if not self._results:
            asyncio.get_running_loop().call_soon(self._send_results)
        self._results.append((id_, np.ascontiguousarray(raw, dtype=np.float32), cached))

    def _send_results(self) -> None:
        answers, self._results = self._results, []
        self.send(ipc.RESULTS, 0, *ipc.pack_results(answers))
        now, arrived = time.perf_counter(), self._arrived
        observe_many(self.metrics.engine_call_seconds, [now - arrived.pop(id_, now) for id_, _, _ in answers])

    def _send_error(self, id_: int, exc: APIError) -> None:
        self._arrived.pop(id_, None)
        self.send(ipc.ERROR, id_, ipc.error_meta(exc))

    async def _embed(self, id_: int, request: PreparedRequest) -> None:
        try:
            raw, cached = await self.service.embed_prepared(request)
        except APIError as exc:
            self._send_error(id_, exc)
        except asyncio.CancelledError:
            self._arrived.pop(id_, None)
            return  # the caller left: nobody to answer
        except Exception:
            log.exception("embedding request failed")
            self._send_error(id_, APIError("internal server error"))
        else:
            self._send_vectors(id_, raw, cached)

    async def _describe(self, id_: int, model: str | None) -> None:
        try:
            info = await self.service.describe(model)
        except APIError as exc:
            self.send(ipc.ERROR, id_, ipc.error_meta(exc))
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("describing model %s failed", model)
            self.send(ipc.ERROR, id_, ipc.error_meta(APIError("internal server error")))
        else:
            self.send(ipc.INFO, id_, asdict(info))

    async def _route(self, id_: int, path: str, method: str, body_in: bytes, *, public: bool = False) -> None:
        """Run the route on this app in-process (no socket): its answer goes back to the front-end as is.
        The operations routes, and reranking (the front-end has checked the key and the body's size)."""
        answer: dict[str, Any] = {"status": 500, "headers": []}
        body: list[bytes] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": body_in, "more_body": False}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                answer["headers"] = [
                    [k.decode("latin-1"), v.decode("latin-1")] for k, v in message["headers"]
                ]
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))

        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"content-type", b"application/json")] if body_in else [],
            "client": None,
            "server": None,
        }
        if public:
            scope[PUBLIC_KEY] = True  # the front-end's guard found no key: the public answer
        try:
            await self.app(scope, receive, send)
        except Exception:
            # Starlette has answered 500 already and re-raises; the front-end must still get that answer.
            log.exception("operations route %s failed", path)
        self.send(ipc.RESPONSE, id_, answer, b"".join(body))

    def _record(self, meta: dict[str, Any]) -> None:
        event = meta["event"]
        if event == "requests":
            self.metrics.requests_done(meta["endpoint"], meta["status"], meta["seconds"])
        elif event == "tokenized":
            observe_many(self.metrics.for_model(meta["model"]).tokenize_seconds, meta["seconds"])
        elif event == "gone":
            self.metrics.client_gone(meta["stage"])
        elif event == "body_timeout":
            self.metrics.body_timeout()
        elif event == "closed":
            self.metrics.connection_closed(meta["reason"])
        elif event == "process":
            self.metrics.frontends.report(meta["frontend"], meta["stats"])
        elif event == "warm":
            self.state.cold_frontends -= 1
