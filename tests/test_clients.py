"""Clients that misbehave: ones that leave while their texts are queued, and slow ones. Against the real
server process: deadlines and disconnects are handled in the HTTP protocol, below the app."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from embedserver_testing.server_process import running_server
from tests.conftest import metric_reaches, metric_sample


@pytest.fixture(scope="module", params=[0, 2], ids=["one-process", "front-ends"])
def strict_server(
    request: pytest.FixtureRequest, catalog_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The same behaviour is required of one process and of HTTP_WORKERS front-ends."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {
        "CATALOG_FILE": str(catalog_file),
        "MODEL_NAME": "tiny",
        "HF_HUB_OFFLINE": "1",
        "HEADER_TIMEOUT_S": "1",
        "BODY_TIMEOUT_S": "1",
        "MAX_QUEUE_WAIT_S": "0",
        "HTTP_WORKERS": str(request.param),
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
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\n")
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
            b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\n"
            b"content-length: 100\r\n\r\n" + b'{"input": "'
        )
        started_at = time.monotonic()
        raw = _read_all(sock)
        assert 0.8 < time.monotonic() - started_at < 5
    assert _error_code(raw) == "request_timeout"
    assert metric_reaches(strict_server, "embedserver_body_timeouts_total", 1) >= 1


@pytest.mark.slow
@pytest.mark.parametrize("padding", [0, 300_000], ids=["small-body", "body-past-64KiB"])
def test_a_client_gone_while_queued_is_dropped_before_its_texts_run(strict_server: str, padding: int) -> None:
    # Past 64 KiB uvicorn pauses reading until the app takes the body; a pause left in place after the last
    # chunk would hide the client's close until the answer was computed.
    before = httpx.get(f"{strict_server}/metrics").text
    busy: dict[str, httpx.Response] = {}
    texts = [f"keeps the model busy, text {i} of run {padding} " * 20 for i in range(1500)]  # no cache hits
    sender = threading.Thread(
        target=lambda: busy.update(
            r=httpx.post(f"{strict_server}/v1/embeddings", json={"input": texts}, timeout=120)
        )
    )
    sender.start()
    # Wait until the big request is queued: what comes next waits behind it.
    for _ in range(200):
        queued = metric_sample(
            httpx.get(f"{strict_server}/metrics").text, 'embedserver_queue_depth{model="tiny"}'
        )
        if queued > 100:
            break
        time.sleep(0.05)
    body = (
        b"{"
        + b" " * padding
        + orjson.dumps({"input": [f"abandoned while queued {i}, run {padding}" for i in range(3)]})[1:]
    )
    with _connect(strict_server) as sock:
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(body) + body
        )
        time.sleep(0.3)
    sender.join(timeout=120)
    assert busy["r"].status_code == 200
    after = httpx.get(f"{strict_server}/metrics").text

    def grew(name: str) -> float:
        return metric_sample(after, name, 0.0) - metric_sample(before, name, 0.0)

    assert grew('embedserver_client_disconnects_total{stage="waiting"}') == 1
    assert grew('embedserver_dropped_total{model="tiny"}') == 3  # never computed
    assert grew('embedserver_requests_total{endpoint="/v1/embeddings",status="499"}') == 1
    assert grew('embedserver_texts_total{model="tiny"}') == 1500
