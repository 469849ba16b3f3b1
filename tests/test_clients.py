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
        "SEND_TIMEOUT_S": "2",
        "MAX_REQUEST_TOKENS": "1000000",  # one request keeps the model busy for seconds
        "MAX_UNSENT_BYTES": str(1024 * 1024),
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


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def _send_until_refused(sock: socket.socket, chunks: Iterator[bytes]) -> bytes:
    """Send until the server answers and closes; the answer."""
    try:
        for chunk in chunks:
            sock.sendall(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        return _read_all(sock)
    except ConnectionResetError:
        return b""


@pytest.mark.slow
def test_headers_past_the_limits_are_431_before_anything_runs(strict_server: str) -> None:
    head = b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\n"
    with _connect(strict_server) as sock:  # one field past MAX_HEADER_BYTES (32 KiB)
        raw = _send_until_refused(sock, iter([head + b"x-big: " + b"a" * 40_000 + b"\r\n\r\n"]))
        assert _status(raw) == 431 and b"MAX_HEADER_BYTES" in raw
    with _connect(strict_server) as sock:  # more fields than MAX_HEADER_COUNT (100)
        fields = b"".join(b"x-f%d: 1\r\n" % i for i in range(120))
        assert _status(_send_until_refused(sock, iter([head + fields + b"\r\n"]))) == 431
    with _connect(strict_server) as sock:  # a header that never ends: cut once past the limit, not at 10 MB
        sock.settimeout(10)
        endless = (b"a" * 65536 for _ in range(160))
        raw = _send_until_refused(sock, iter([head + b"x-endless: ", *endless]))
        assert raw == b"" or _status(raw) == 431
    response = httpx.post(
        f"{strict_server}/v1/embeddings", json={"input": "still served"}, headers={"x-ok": "a" * 8000}
    )
    assert response.status_code == 200
    assert (
        metric_reaches(strict_server, 'embedserver_connections_closed_total{reason="headers_too_large"}', 3)
        >= 3
    )


def _unread_answers(url: str, texts: list[str], requests: int) -> socket.socket:
    """A connection that asks for `texts` `requests` times (pipelined) and reads nothing: past the few MB
    the kernel's socket buffers take, the answers wait in the server."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    body = orjson.dumps({"input": texts})
    request = (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(body) + body
    )
    sock.sendall(request * requests)
    return sock


def _cuts(url: str, reason: str) -> float:
    return metric_sample(
        httpx.get(f"{url}/metrics").text, f'embedserver_connections_closed_total{{reason="{reason}"}}', 0.0
    )


def _wait_for_cut(url: str, reason: str, before: float) -> float:
    series = f'embedserver_connections_closed_total{{reason="{reason}"}}'
    return metric_reaches(url, series, before + 1, timeout_s=20) - before


def _read_what_is_left(sock: socket.socket) -> int:
    sock.settimeout(10)
    received = 0
    try:
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
    except ConnectionResetError:
        pass
    return received


@pytest.mark.slow
def test_an_answer_left_unread_is_dropped_after_the_send_deadline(strict_server: str) -> None:
    texts = [f"unread answer {i} {time.monotonic()}" for i in range(300)]
    answer = len(httpx.post(f"{strict_server}/v1/embeddings", json={"input": texts}, timeout=60).content)
    before = _cuts(strict_server, "send_timeout")
    # 30 answers, ~7 MB: past what the kernel's socket buffers take, and under MAX_UNSENT_BYTES (1 MiB) held
    # here, since uvicorn writes a pipelined answer only once the one before it has left its buffer.
    with _unread_answers(strict_server, texts, 30) as slow:
        started = time.monotonic()
        assert _wait_for_cut(strict_server, "send_timeout", before) == 1
        assert 1.5 < time.monotonic() - started < 15  # SEND_TIMEOUT_S=2
        assert _read_what_is_left(slow) < 30 * answer  # the client sees its answers cut short


@pytest.mark.slow
def test_unread_answers_past_the_memory_bound_are_dropped_at_once(strict_server: str) -> None:
    texts = [f"unread answers {i} {time.monotonic()}" for i in range(2048)]
    answer = len(httpx.post(f"{strict_server}/v1/embeddings", json={"input": texts}, timeout=60).content)
    assert answer > 1024 * 1024  # one answer alone is past MAX_UNSENT_BYTES
    before = _cuts(strict_server, "unsent_bytes")
    hogs = [_unread_answers(strict_server, texts, 4) for _ in range(8)]  # spread over the front-ends
    try:
        # The label is the proof that the bound cut them before the deadline: each sweep checks a connection's
        # send deadline before the memory bound, so one stalled past SEND_TIMEOUT_S is counted as send_timeout.
        # (A wall-clock bound here would also count the time to parse and answer 8 x 4 x 2048 texts.)
        assert _wait_for_cut(strict_server, "unsent_bytes", before) >= 1
    finally:
        for sock in hogs:
            sock.close()
