"""Clients that misbehave: ones that leave while their texts are queued, and slow ones (real server process:
the header deadline lives in the HTTP protocol, below the app)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from starlette.types import Message

from benchmarks.server_process import running_server
from embedserver.app import create_app
from embedserver.catalog import ModelSpec
from embedserver.engine import Engine
from embedserver.loader import load_engine
from embedserver.settings import Settings
from tests.conftest import started


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def test_a_client_gone_while_queued_is_dropped_before_its_texts_run(
    make_settings: Callable[..., Settings],
) -> None:
    gate = threading.Event()
    gate.set()  # open for the load-time warm-up and a first request; closed below to hold batches
    embedded: list[int] = []

    def gated_loader(spec: ModelSpec) -> Engine:
        engine = load_engine(spec, dtype="auto")
        embed = engine.embed

        def held(sequences: list[list[int]]) -> np.ndarray:
            gate.wait(timeout=60)
            embedded.append(len(sequences))
            return embed(sequences)

        engine.embed = held  # type: ignore[method-assign]
        return engine

    app = create_app(make_settings(max_batch_size=2), loader=gated_loader)
    async with started(app) as client:
        await client.post("/v1/embeddings", json={"input": "warm"})
        embedded.clear()
        gate.clear()
        try:
            # Four texts, two batches: both in-flight slots held, so what comes next stays queued.
            blocker = asyncio.create_task(
                client.post("/v1/embeddings", json={"input": [f"held {i}" for i in range(4)]})
            )
            await asyncio.sleep(0.3)
            body = orjson.dumps({"input": [f"abandoned {i}" for i in range(3)]})
            leave = asyncio.Event()
            sent: list[Message] = []
            delivered = False

            async def receive() -> Message:
                nonlocal delivered
                if not delivered:
                    delivered = True
                    return {"type": "http.request", "body": body, "more_body": False}
                await leave.wait()
                return {"type": "http.disconnect"}

            async def send(message: Message) -> None:
                sent.append(message)

            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/v1/embeddings",
                "raw_path": b"/v1/embeddings",
                "query_string": b"",
                "root_path": "",
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
                "client": ("127.0.0.1", 40000),
                "server": ("embedserver.test", 80),
            }
            abandoned = asyncio.create_task(app(scope, receive, send))
            await asyncio.sleep(0.3)
            assert not abandoned.done()
            leave.set()
            await asyncio.wait_for(abandoned, 5)
            assert sent == []  # nobody to answer
        finally:
            gate.set()
        response = await blocker
        assert response.status_code == 200 and len(response.json()["data"]) == 4
        assert sum(embedded) == 4  # the three abandoned texts never reached the model
        metrics = (await client.get("/metrics")).text
        assert _metric(metrics, 'embedserver_client_disconnects_total{stage="waiting"}') == 1
        assert _metric(metrics, 'embedserver_dropped_total{model="tiny"}') == 3
        assert _metric(metrics, 'embedserver_requests_total{endpoint="/v1/embeddings",status="499"}') == 1


# --- slow clients, against the real process -------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_server(catalog_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {
        "CATALOG_FILE": str(catalog_file),
        "MODEL_NAME": "tiny",
        "HF_HUB_OFFLINE": "1",
        "HEADER_TIMEOUT_S": "1",
        "BODY_TIMEOUT_S": "1",
    }
    with running_server(env, log, timeout=120) as url:
        yield url


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _error_code(raw: bytes) -> str:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), head
    code: str = orjson.loads(body)["error"]["code"]
    return code


@pytest.mark.slow
def test_a_silent_connection_is_closed_after_the_header_deadline(strict_server: str) -> None:
    with _connect(strict_server) as sock:
        started_at = time.monotonic()
        raw = _read_all(sock)  # the server answers and closes; we never sent a byte
        assert 0.8 < time.monotonic() - started_at < 5
    assert _error_code(raw) == "request_timeout"


@pytest.mark.slow
def test_headers_sent_a_byte_at_a_time_do_not_hold_the_server(strict_server: str) -> None:
    slow = [_connect(strict_server) for _ in range(16)]
    try:
        for sock in slow:
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")
        # While sixteen clients trickle headers, others are served at once.
        started_at = time.monotonic()
        for _ in range(6):
            for sock in slow:
                sock.sendall(b"X")
            response = httpx.post(f"{strict_server}/v1/embeddings", json={"input": "served"}, timeout=5)
            assert response.status_code == 200
            time.sleep(0.1)
        assert time.monotonic() - started_at < 5
        for sock in slow:
            assert _error_code(_read_all(sock)) == "request_timeout"
    finally:
        for sock in slow:
            sock.close()


@pytest.mark.slow
def test_a_body_that_stops_arriving_is_408(strict_server: str) -> None:
    with _connect(strict_server) as sock:
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 100\r\n\r\n" + b'{"input": "'
        )
        started_at = time.monotonic()
        raw = _read_all(sock)
        assert 0.8 < time.monotonic() - started_at < 5
    assert _error_code(raw) == "request_timeout"
    metrics = httpx.get(f"{strict_server}/metrics").text
    assert _metric(metrics, "embedserver_body_timeouts_total") >= 1
