"""The real server process (`python -m embedserver`), driven by the official openai client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
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


@pytest.fixture(scope="module")
def server(catalog_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {
        **os.environ,
        "PORT": str(port),
        "CATALOG_FILE": str(catalog_file),
        "MODEL_NAME": "tiny",
        "HF_HUB_OFFLINE": "1",
        "LOG_LEVEL": "INFO",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "embedserver"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"server exited early:\n{log.read_text()}"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail(f"server did not become healthy:\n{log.read_text()}")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        # uvicorn re-raises SIGTERM after a clean shutdown, so -15 (shell: 143) is a clean exit too.
        assert code in (0, -signal.SIGTERM), f"server exit status {code}:\n{log.read_text()}"
        assert "Application shutdown complete" in log.read_text()


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
