"""One request cannot take the model: token limits, batches shared between requests, and a hard bound on how
long an accepted text waits. Against the real server process."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from embedserver_testing.server_process import running_server
from tests.conftest import metric_sample

pytestmark = pytest.mark.slow


def _env(catalog_file: Path, **extra: str) -> dict[str, str]:
    return {"CATALOG_FILE": str(catalog_file), "MODEL_NAME": "tiny", "HF_HUB_OFFLINE": "1", **extra}


@pytest.fixture(scope="module", params=[0, 2], ids=["one-process", "front-ends"])
def shared_server(
    request: pytest.FixtureRequest, catalog_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    env = _env(
        catalog_file,
        MAX_REQUEST_TOKENS="200000",
        MAX_QUEUE_WAIT_S="60",
        CACHE_MAX_ENTRIES="0",
        HTTP_WORKERS=str(request.param),
    )
    with running_server(env, tmp_path_factory.mktemp("server") / "server.log", timeout=120) as url:
        yield url


def _texts(count: int, tag: str) -> list[str]:
    return [f"{tag} text {i} " + "shares the model fairly " * 45 for i in range(count)]  # ~180 tokens each


def test_a_request_past_max_request_tokens_is_413(shared_server: str) -> None:
    response = httpx.post(
        f"{shared_server}/v1/embeddings", json={"input": _texts(1200, "too many")}, timeout=60
    )
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "too_many_tokens" and "MAX_REQUEST_TOKENS" in error["message"]


def test_a_large_request_does_not_starve_a_small_one(shared_server: str) -> None:
    large: dict[str, httpx.Response] = {}
    texts = _texts(1000, f"large {int(time.monotonic()) % 1000}")  # ~190k tokens: ~5 s of work here
    sender = threading.Thread(
        target=lambda: large.update(
            r=httpx.post(f"{shared_server}/v1/embeddings", json={"input": texts}, timeout=120)
        )
    )
    sender.start()
    queued = 'embedserver_queue_depth{model="tiny"}'
    deadline = time.monotonic() + 30
    while metric_sample(httpx.get(f"{shared_server}/metrics").text, queued) < 300:
        assert time.monotonic() < deadline and sender.is_alive(), f"the large request never queued: {large}"
        time.sleep(0.02)
    begun = time.monotonic()
    small = httpx.post(
        f"{shared_server}/v1/embeddings", json={"input": f"small {time.monotonic()}"}, timeout=60
    )
    waited = time.monotonic() - begun
    still_queued = metric_sample(httpx.get(f"{shared_server}/metrics").text, queued)
    sender.join(timeout=120)
    assert small.status_code == 200 and large["r"].status_code == 200
    # Answered while most of the large request still waited, not after it.
    assert still_queued > 100, f"the small request waited {waited:.1f} s, until the large one was nearly done"


def test_an_accepted_request_never_waits_past_max_queue_wait(catalog_file: Path, tmp_path: Path) -> None:
    """A burst on a model with no measured rate yet: admission takes it all (it cannot judge the wait), far
    more than the model clears within MAX_QUEUE_WAIT_S. The bound still holds: requests still waiting after it
    get 429 queue_timeout instead of an answer arbitrarily late, and their texts are never computed."""
    # Batches of 32: passes short against the 1 s bound, so the bound on each text's wait below is tight.
    env = _env(
        catalog_file, MAX_QUEUE_WAIT_S="1", CACHE_MAX_ENTRIES="0", HTTP_WORKERS="0", MAX_BATCH_SIZE="32"
    )
    texts = [f"burst {i} " + "waits its turn " * 120 for i in range(600)]  # ~14 s of work here

    async def burst(url: str) -> list[tuple[int, str]]:
        limits = httpx.Limits(max_connections=len(texts))
        async with httpx.AsyncClient(limits=limits, timeout=120) as client:

            async def one(text: str) -> tuple[int, str]:
                response = await client.post(f"{url}/v1/embeddings", json={"input": text})
                code = response.json()["error"]["code"] if response.status_code != 200 else ""
                return response.status_code, code

            return await asyncio.gather(*(one(text) for text in texts))

    with running_server(env, tmp_path / "server.log", timeout=120) as url:
        answers = asyncio.run(burst(url))
        statuses = set(answers)
        assert statuses <= {(200, ""), (429, "queue_timeout"), (429, "overloaded")}, statuses
        late = sum(code == "queue_timeout" for _, code in answers)
        assert late > 0 and sum(status == 200 for status, _ in answers) > 0
        metrics = httpx.get(f"{url}/metrics").text
        assert metric_sample(metrics, 'embedserver_expired_total{model="tiny"}') == late
        computed = metric_sample(metrics, 'embedserver_texts_total{model="tiny"}')
        assert computed <= len(texts) - late
        # No text was computed after waiting past MAX_QUEUE_WAIT_S (1 s) by more than its hand-over to the
        # model's thread, at most the two passes ahead of it. Read in the server: with 600 clients on the same
        # small machine, an answer reaches its client seconds after it leaves, time that is not the queue's.
        passes = _histogram(metrics, "embedserver_inference_seconds")
        longest_pass = next(le for le, count in passes if count == passes[-1][1])
        waits = _histogram(metrics, "embedserver_queue_wait_seconds")
        bound = next(le for le, _ in waits if le >= 1.0 + 2 * longest_pass)
        waited_longer = waits[-1][1] - dict(waits)[bound]
        assert waited_longer == 0, f"{waited_longer:g} computed texts waited more than {bound:g} s; {waits}"


def _histogram(metrics: str, name: str) -> list[tuple[float, float]]:
    """The tiny model's cumulative buckets of histogram `name` from /metrics: (upper bound, count), ascending,
    +Inf last."""
    found = re.findall(rf'^{name}_bucket{{le="([^"]+)",model="tiny"}} (\S+)$', metrics, re.M)
    return sorted((float(le), float(count)) for le, count in found)
