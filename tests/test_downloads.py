"""Model downloads: never on the MLX thread, never unbounded, and started by a request only where the
operator allows it. The hub here is a listener that accepts connections and never answers, the fault that
once held start-up in "loading" for minutes and froze every model's embeddings."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from embedserver.server.engine_app import create_app
from embedserver.settings import Settings
from embedserver_testing.server_process import server_process
from tests.conftest import started


@pytest.fixture
def silent_hub() -> Iterator[str]:
    """An HTTP endpoint that accepts every connection and never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for sock in held:
        sock.close()
    listener.close()


def _catalog(tmp_path: Path, tiny_qwen3: Path, default: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(
        f"""
default = "{default}"
fallback = "tiny"

[models.tiny]
source = "{tiny_qwen3}"

[models.remote]
source = "example-org/never-answers"

[models.remote-too]
source = "example-org/never-answers-either"
"""
    )
    return path


async def test_a_request_does_not_start_a_download_by_default(
    tmp_path: Path, tiny_qwen3: Path, silent_hub: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", silent_hub)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    settings = Settings(_env_file=None, catalog_file=_catalog(tmp_path, tiny_qwen3, "tiny"))  # type: ignore[call-arg]
    async with started(create_app(settings)) as client:
        begun = time.monotonic()
        response = await client.post("/v1/embeddings", json={"model": "remote", "input": "x"})
        assert time.monotonic() - begun < 5
        assert response.status_code == 404
        error = response.json()["error"]
        assert error["code"] == "model_not_downloaded" and "DOWNLOAD_ON_REQUEST" in error["message"]
        assert (await client.post("/v1/embeddings", json={"input": "x"})).status_code == 200
        health = (await client.get("/health")).json()
        assert health["models"]["remote"]["status"] == "unloaded"  # not a failed model: nothing to retry


@pytest.mark.slow
def test_a_stalled_download_is_given_up_and_never_stalls_other_models(
    tmp_path: Path, tiny_qwen3: Path, silent_hub: str
) -> None:
    env = {
        "CATALOG_FILE": str(_catalog(tmp_path, tiny_qwen3, "remote")),
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": silent_hub,
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "DOWNLOAD_STALL_S": "2",
        "DOWNLOAD_ON_REQUEST": "true",
        "HTTP_WORKERS": "0",
    }
    with server_process(env, tmp_path / "server.log", timeout=120) as (url, _):
        # Start-up: the default's download stalls, is given up, and the fallback serves within a bound.
        begun = time.monotonic()
        while httpx.get(f"{url}/ready").status_code != 200:
            assert time.monotonic() - begun < 60, "start-up never fell back"
            time.sleep(0.2)
        health = httpx.get(f"{url}/health").json()
        assert health["fallback"]["requested"] == "remote" and health["fallback"]["serving"] == "tiny"
        assert "no progress" in health["fallback"]["reason"]

        # A request may start a download here; while it stalls, the model that serves keeps serving.
        def stalled() -> httpx.Response:
            return httpx.post(f"{url}/v1/embeddings", json={"model": "remote-too", "input": "x"}, timeout=60)

        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(stalled)
            time.sleep(0.5)
            for i in range(5):
                begun = time.monotonic()
                answer = httpx.post(
                    f"{url}/v1/embeddings", json={"input": f"served meanwhile {i}"}, timeout=10
                )
                assert answer.status_code == 200 and time.monotonic() - begun < 1.0
            response = waiting.result(timeout=60)
        assert response.status_code == 503
        assert "no progress for 2 s" in response.json()["error"]["message"]
    log = (tmp_path / "server.log").read_text()
    assert "never retrieved" not in log
