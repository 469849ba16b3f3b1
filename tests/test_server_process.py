"""The real server process (`python -m embedserver`), driven by the official openai client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from openai import OpenAI

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(
    catalog_file: Path, log: Path, workers: int = 0, extra: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {
        **os.environ,
        "DRAIN_DELAY_S": "0",
        "MAX_REQUEST_TOKENS": "1000000",  # requests that keep the model busy for seconds
        "PORT": str(port),
        "CATALOG_FILE": str(catalog_file),
        "MODEL_NAME": "tiny",
        "HF_HUB_OFFLINE": "1",
        "LOG_LEVEL": "INFO",
        "HTTP_WORKERS": str(workers),
        **(extra or {}),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "embedserver"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited early:\n{log.read_text()}"
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"server did not become healthy:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    # uvicorn re-raises SIGTERM after a clean shutdown, so -15 (shell: 143) is a clean exit too.
    assert code in (0, -signal.SIGTERM), f"server exit status {code}:\n{log.read_text()}"
    assert "Application shutdown complete" in log.read_text()


@pytest.fixture(scope="module", params=[0, 2], ids=["one-process", "front-ends"])
def server(
    request: pytest.FixtureRequest, catalog_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    proc, url = _start(catalog_file, log, request.param)
    try:
        yield url
    finally:
        _stop(proc, log)


@pytest.mark.parametrize("workers", [0, 2], ids=["one-process", "front-ends"])
def test_sigterm_lets_accepted_requests_finish(catalog_file: Path, tmp_path: Path, workers: int) -> None:
    import threading

    log = tmp_path / "server.log"
    proc, url = _start(catalog_file, log, workers)
    texts = [f"a request accepted before shutdown, text {i} " * 20 for i in range(1500)]
    result: dict[str, httpx.Response] = {}

    def send() -> None:
        result["response"] = httpx.post(f"{url}/v1/embeddings", json={"input": texts}, timeout=120)

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(1.0)  # the request is inside the server, its batches running
    _stop(proc, log)
    sender.join(timeout=120)
    response = result["response"]
    assert response.status_code == 200 and len(response.json()["data"]) == 1500


def _in_background(url: str, texts: list[str]) -> tuple[threading.Thread, dict[str, object]]:
    result: dict[str, object] = {}

    def send() -> None:
        try:
            result["response"] = httpx.post(f"{url}/v1/embeddings", json={"input": texts}, timeout=120)
        except httpx.TransportError as exc:
            result["error"] = exc

    sender = threading.Thread(target=send)
    sender.start()
    return sender, result


@pytest.mark.parametrize("workers", [0, 2], ids=["one-process", "front-ends"])
def test_sigterm_turns_readiness_off_while_serving_then_refuses_connections_at_once(
    catalog_file: Path, tmp_path: Path, workers: int
) -> None:
    """What a load balancer needs: /ready 503 for DRAIN_DELAY_S while requests are still served, then new
    connections refused at once (never queued with nobody to accept them), accepted work finished."""
    log = tmp_path / "server.log"
    # Admission would refuse the request sent during the delay once the backlog's rate is measured (9 s of
    # work > MAX_QUEUE_WAIT_S), which happens within the first second on a fast machine: not what this tests.
    env = {"DRAIN_DELAY_S": "2", "MAX_QUEUE_WAIT_S": "60"}
    proc, url = _start(catalog_file, log, workers, env)
    texts = [f"in flight through the drain, text {i} " * 20 for i in range(1500)]  # ~9 s of work here
    sender, result = _in_background(url, texts)
    time.sleep(1.0)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    ready = httpx.get(f"{url}/ready", headers={"connection": "close"})
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    served = httpx.post(f"{url}/v1/embeddings", json={"input": "arrived during the delay"}, timeout=30)
    assert served.status_code == 200
    time.sleep(max(0.0, signalled + 2.8 - time.monotonic()))
    assert proc.poll() is None  # still finishing the request in flight
    begun = time.monotonic()
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{url}/v1/embeddings", json={"input": "too late"}, timeout=10)
    assert time.monotonic() - begun < 1.0
    sender.join(timeout=120)
    response = result["response"]
    assert isinstance(response, httpx.Response) and response.status_code == 200
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)


@pytest.mark.parametrize("workers", [0, 2], ids=["one-process", "front-ends"])
def test_shutdown_is_bounded_when_work_outlasts_the_grace(
    catalog_file: Path, tmp_path: Path, workers: int
) -> None:
    """A request still running when SHUTDOWN_GRACE_S ends gets 503 shutting_down (no 500, no traceback), and a
    batch that keeps the MLX thread past every step is cut by the watchdog: the process is gone within
    DRAIN_DELAY_S + SHUTDOWN_GRACE_S + 5 s."""
    log = tmp_path / "server.log"
    one_batch = {"MAX_BATCH_SIZE": "2048", "MAX_BATCH_TOKENS": str(2048 * 256), "SHUTDOWN_GRACE_S": "1"}
    proc, url = _start(catalog_file, log, workers, one_batch)
    texts = [f"outlasts the grace, text {i} " * 20 for i in range(2048)]  # one batch of >10 s here
    sender, result = _in_background(url, texts)
    time.sleep(1.5)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    assert time.monotonic() - signalled < 1 + 5 + 2.5
    sender.join(timeout=30)
    response = result.get("response")
    assert isinstance(response, httpx.Response), result  # answered, not dropped
    assert response.status_code == 503 and response.json()["error"]["code"] == "shutting_down"
    text = log.read_text()
    assert "Exception in ASGI application" not in text and "Traceback" not in text
    assert code in (0, 1, -signal.SIGTERM)


def test_openai_client_gets_the_servers_embeddings(server: str) -> None:
    client = OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    texts = ["the openai client", "asks for base64 by default", "短文本"]
    result = client.embeddings.create(model="tiny", input=texts)
    vectors = np.array([item.embedding for item in result.data], dtype=np.float32)
    assert vectors.shape == (3, 64) and [item.index for item in result.data] == [0, 1, 2]
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert result.model == "tiny" and result.usage.prompt_tokens > 0
    native = httpx.post(f"{server}/embed_batch", json={"texts": texts}).json()
    assert np.allclose(vectors, np.array(native["embeddings"]), atol=1e-6)
    floats = client.embeddings.create(model="tiny", input=texts[0], encoding_format="float", dimensions=32)
    assert len(floats.data[0].embedding) == 32


def test_openai_client_sees_errors_as_its_own_exceptions(server: str) -> None:
    import openai

    client = OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="no-such-model", input="x")
    assert "not served here" in str(info.value)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="tiny", input="")
    assert {m.id for m in client.models.list()} >= {"tiny", "minilm"}


def test_answers_carry_no_server_banner_and_are_neither_sniffed_nor_cached(server: str) -> None:
    """Every answer, from a route, the fast lane, an error or an operations route, in either process layout."""
    answers = [
        httpx.post(f"{server}/v1/embeddings", json={"input": "headers"}),  # the fast lane
        httpx.post(f"{server}/v1/embeddings", json={"input": []}),  # an error from FastAPI
        httpx.get(f"{server}/health"),
        httpx.get(f"{server}/metrics"),
        httpx.get(f"{server}/nowhere"),
    ]
    for answer in answers:
        assert "server" not in answer.headers, answer.request.url
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["cache-control"] == "no-store"
