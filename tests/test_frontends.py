"""HTTP_WORKERS: front-end processes take HTTP and JSON, one engine process batches and runs the model for all
of them. Against the real processes (test_clients.py and test_server_process.py also run in this mode)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from embedserver_testing.server_process import server_process
from tests.conftest import metric_reaches, metric_sample

pytestmark = pytest.mark.slow

TEXTS = ["front-end processes", "one engine for all of them", "短文本", "the same vectors either way"]


def _env(catalog_file: Path, workers: int) -> dict[str, str]:
    return {
        "CATALOG_FILE": str(catalog_file),
        "MODEL_NAME": "tiny",
        "HF_HUB_OFFLINE": "1",
        "HTTP_WORKERS": str(workers),
        "CACHE_MAX_ENTRIES": "0",
        "MAX_REQUEST_TOKENS": "1000000",  # requests that keep the model busy for seconds
    }


@pytest.fixture(scope="module")
def frontends(
    catalog_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    log = tmp_path_factory.mktemp("frontends") / "server.log"
    with server_process(_env(catalog_file, 2), log, timeout=120) as running:
        yield running


def _frontend_pids(engine_pid: int) -> set[int]:
    pids = set()
    for child in psutil.Process(engine_pid).children():
        try:
            front_end = "spawn_main" in " ".join(child.cmdline()) and not child.name().startswith("model-")
            if child.status() != psutil.STATUS_ZOMBIE and front_end:  # (MODEL_PROCESS: a model's is not)
                pids.add(child.pid)
        except psutil.Error:
            continue  # gone while we looked
    return pids


def _wait_for_frontends(engine_pid: int, count: int, timeout: float = 20) -> set[int]:
    deadline = time.monotonic() + timeout
    while len(pids := _frontend_pids(engine_pid)) != count:
        assert time.monotonic() < deadline, f"front-ends: {pids}"
        time.sleep(0.1)
    return pids


def test_vectors_equal_those_of_the_single_process_server(
    frontends: tuple[str, subprocess.Popen[bytes]], catalog_file: Path, tmp_path: Path
) -> None:
    url, _ = frontends
    with server_process(_env(catalog_file, 0), tmp_path / "single.log", timeout=120) as (single, _):
        expected = httpx.post(f"{single}/v1/embeddings", json={"input": TEXTS}).json()
    got = httpx.post(f"{url}/v1/embeddings", json={"input": TEXTS}).json()
    assert got["usage"] == expected["usage"] and got["model"] == expected["model"] == "tiny"
    vectors = np.array([d["embedding"] for d in got["data"]], dtype=np.float32)
    assert vectors.shape == (4, 64)
    assert np.allclose(vectors, [d["embedding"] for d in expected["data"]], atol=1e-5)
    native = httpx.post(f"{url}/embed_batch", json={"texts": TEXTS, "dimensions": 16}).json()
    assert np.allclose(np.linalg.norm(np.array(native["embeddings"]), axis=1), 1.0, atol=1e-5)
    assert native["dim"] == 16 and native["count"] == 4


def test_front_ends_are_processes_of_their_own_without_mlx(
    frontends: tuple[str, subprocess.Popen[bytes]],
) -> None:
    _, engine = frontends
    pids = _wait_for_frontends(engine.pid, 2)
    engine_libraries = {m.path for m in psutil.Process(engine.pid).memory_maps()}
    assert any("libmlx" in path for path in engine_libraries)
    for pid in pids:
        assert not any("libmlx" in m.path for m in psutil.Process(pid).memory_maps())


def test_errors_cross_the_link_in_openai_shape(frontends: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, _ = frontends
    # Raised in the engine process: the dimension check needs the loaded model.
    too_wide = {"input": "x", "dimensions": 65}
    response = httpx.post(f"{url}/v1/embeddings", json=too_wide)
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "dimensions must be between 1 and 64 for model tiny, got 65",
        "type": "invalid_request_error",
        "param": "dimensions",
        "code": None,
    }
    assert httpx.post(f"{url}/embed", json={"text": "x", "dimensions": 65}).status_code == 422  # native API
    missing = httpx.post(f"{url}/v1/embeddings", json={"input": "x", "model": "no-such-model"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    # What a request may carry but orjson refuses crosses the link too, and gets the single process's 4xx.
    surrogate = httpx.post(
        f"{url}/v1/embeddings",
        content=b'{"input": "lone \\ud800"}',
        headers={"content-type": "application/json"},
    )
    assert surrogate.status_code == 400 and "surrogate" in surrogate.json()["error"]["message"]
    huge = httpx.post(f"{url}/v1/embeddings", json={"input": [[1, 2, 10**20]]})
    assert huge.status_code == 400 and huge.json()["error"]["code"] == "invalid_token_id"
    # Raised in the front-end: validation and unknown paths.
    assert httpx.post(f"{url}/v1/embeddings", json={"input": []}).status_code == 400
    assert httpx.get(f"{url}/nowhere").json()["error"]["code"] == "not_found"


def test_each_front_end_reports_its_resources(frontends: tuple[str, subprocess.Popen[bytes]]) -> None:
    """One /metrics shows every process: the engine's process_* and each front-end's own, by slot."""
    url, engine = frontends
    pids = _frontend_pids(engine.pid)
    for slot in ("0", "1"):
        rss = metric_reaches(url, f'embedserver_frontend_resident_memory_bytes{{frontend="{slot}"}}', 1e6, 10)
        assert rss < 4e9
        assert (
            metric_sample(
                httpx.get(f"{url}/metrics").text, f'embedserver_frontend_open_fds{{frontend="{slot}"}}'
            )
            > 3
        )
    reported = sum(
        metric_sample(
            httpx.get(f"{url}/metrics").text,
            f'embedserver_frontend_resident_memory_bytes{{frontend="{slot}"}}',
        )
        for slot in ("0", "1")
    )
    actual = sum(psutil.Process(pid).memory_info().rss for pid in pids)
    assert 0.5 < reported / actual < 2  # the same processes, sampled seconds apart
    assert metric_sample(httpx.get(f"{url}/metrics").text, "process_resident_memory_bytes") > 1e6


def test_operations_routes_describe_the_engine(frontends: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, _ = frontends
    health = httpx.get(f"{url}/health")
    assert health.status_code == 200 and health.json()["models"]["tiny"]["status"] == "ready"
    assert health.headers["content-type"] == "application/json"
    assert httpx.get(f"{url}/ready").json() == {"ready": True, "default_model": "tiny", "status": "ready"}
    assert {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]} >= {"tiny", "minilm"}
    assert httpx.get(f"{url}/models").json()["default"] == "tiny"
    assert [httpx.head(f"{url}{path}").status_code for path in ("/health", "/ready", "/metrics")] == [200] * 3


def test_metrics_count_the_requests_of_every_front_end(
    frontends: tuple[str, subprocess.Popen[bytes]],
) -> None:
    url, _ = frontends
    series = 'embedserver_requests_total{endpoint="/v1/embeddings",status="200"}'
    durations = 'embedserver_request_duration_seconds_count{endpoint="/v1/embeddings",status="200"}'
    tokenized = 'embedserver_tokenization_seconds_count{model="tiny"}'
    scraped = httpx.get(f"{url}/metrics").text
    before = metric_sample(scraped, series, 0.0)
    texts_before = metric_sample(scraped, 'embedserver_texts_total{model="tiny"}', 0.0)
    durations_before = metric_sample(scraped, durations, 0.0)
    tokenized_before = metric_sample(scraped, tokenized, 0.0)
    engine, spent = "embedserver_engine_call_seconds_count", "embedserver_engine_call_seconds_sum"
    duration_sum = durations.replace("_count", "_sum")
    engine_before, spent_before = metric_sample(scraped, engine, 0.0), metric_sample(scraped, spent, 0.0)
    duration_sum_before = metric_sample(scraped, duration_sum, 0.0)

    def one(i: int) -> int:
        # A new connection each time, so the kernel spreads them over both front-ends.
        return httpx.post(f"{url}/v1/embeddings", json={"input": f"counted {i}"}).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(40))) == [200] * 40
    assert metric_reaches(url, series, before + 40) - before == 40
    metrics = httpx.get(f"{url}/metrics").text
    assert metric_sample(metrics, 'embedserver_texts_total{model="tiny"}') - texts_before == 40
    # Each front-end reports its requests' durations and tokenization times in bulk: one sample per request.
    assert metric_sample(metrics, durations) - durations_before == 40
    assert metric_reaches(url, tokenized, tokenized_before + 40) - tokenized_before == 40
    # The engine's share of each call, recorded by the engine: inside its request's server time.
    assert metric_sample(metrics, engine) - engine_before == 40
    in_engine = metric_sample(metrics, spent) - spent_before
    assert 0 < in_engine < metric_sample(metrics, duration_sum) - duration_sum_before


def test_a_killed_front_end_is_replaced_while_the_other_serves(
    frontends: tuple[str, subprocess.Popen[bytes]],
) -> None:
    url, engine = frontends
    pids = _wait_for_frontends(engine.pid, 2)
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    for i in range(20):
        assert httpx.post(f"{url}/v1/embeddings", json={"input": f"still served {i}"}).status_code == 200
    assert victim not in _wait_for_frontends(engine.pid, 2)
    assert httpx.get(f"{url}/ready").status_code == 200


def test_front_ends_stop_when_the_engine_dies(catalog_file: Path, tmp_path: Path) -> None:
    """No orphans: without the engine a front-end could only answer 503, so it exits."""
    with server_process(_env(catalog_file, 2), tmp_path / "server.log", timeout=120) as (url, engine):
        pids = _wait_for_frontends(engine.pid, 2)
        frontends = [psutil.Process(pid) for pid in pids]
        engine.kill()
        engine.wait(10)
        _, alive = psutil.wait_procs(frontends, timeout=15)
        assert not alive, f"front-ends still running: {alive}"
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", timeout=2)


def test_keys_and_overload_answers_cross_the_link(catalog_file: Path, tmp_path: Path) -> None:
    """API keys are checked in the front-ends; a 429 raised by the engine's admission keeps its Retry-After."""
    env = _env(catalog_file, 2) | {"API_KEY": "sesame", "MAX_QUEUE_TEXTS": "1"}
    auth = {"Authorization": "Bearer sesame"}
    with server_process(env, tmp_path / "server.log", timeout=120) as (url, _):
        refused = httpx.post(f"{url}/v1/embeddings", json={"input": "x"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{url}/metrics").status_code == 200  # open, as in one process
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}  # the public answer, as in one process
        assert "models" in httpx.get(f"{url}/health", headers=auth).json()
        big = {"input": [f"keeps the model busy, text {i} " * 20 for i in range(1500)]}
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(httpx.post, f"{url}/v1/embeddings", json=big, headers=auth, timeout=120)
            # Until the big request holds the model's only place: sent earlier, a small request can overtake
            # it (a 1,500-text body takes longer to read) and the big one is refused instead.
            deadline = time.monotonic() + 30
            queued = 'embedserver_queue_depth{model="tiny"}'
            while (
                not metric_sample(httpx.get(f"{url}/metrics").text, queued, 0.0)
                and not running.done()
                and time.monotonic() < deadline
            ):
                time.sleep(0.01)
            second = httpx.post(f"{url}/v1/embeddings", json={"input": "one more"}, headers=auth)
            assert second.status_code == 429, second.text
            assert second.json()["error"]["code"] == "overloaded"
            assert int(second.headers["retry-after"]) >= 1
            assert running.result().status_code == 200


def test_a_port_in_use_is_a_clear_start_up_failure(catalog_file: Path) -> None:
    import socket
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, **_env(catalog_file, 2), "PORT": str(port)}
        run = subprocess.run(
            [sys.executable, "-m", "embedserver"], env=env, capture_output=True, text=True, timeout=60
        )
    assert run.returncode == 3
    assert f"cannot listen on 127.0.0.1:{port}" in run.stderr and "Traceback" not in run.stderr


def test_front_ends_tokenize_and_the_engines_cache_answers_as_one_process(
    catalog_file: Path, tmp_path: Path
) -> None:
    """Front-ends prepare requests (instructions, tokenization, keys) and the engine's cache serves every
    front-end: the same vectors, usage and `cached` flags as one process gives, repeated texts included."""
    texts = ["a query about mlx", "a passage", "a query about mlx"]
    answers = []
    for workers in (0, 2):
        env = {**_env(catalog_file, workers), "CACHE_MAX_ENTRIES": "100"}
        with server_process(env, tmp_path / f"server-{workers}.log", timeout=120) as (url, _):
            # A front-end's first request may wait for the model's tokenizer to load there.
            body = {"texts": texts, "input_type": "query"}
            first = httpx.post(f"{url}/embed_batch", json=body, timeout=60).json()
            # New connections, so the kernel may give each to either front-end.
            body = {"texts": texts[:2], "input_type": "query"}
            again = [httpx.post(f"{url}/embed_batch", json=body, timeout=60).json() for _ in range(3)]
            answers.append((first, again))
    (single, single_again), (split, split_again) = answers
    assert split["cached"] == single["cached"] == [False, False, False]
    assert split["tokens"] == single["tokens"]
    assert np.allclose(split["embeddings"], single["embeddings"], atol=1e-5)
    assert split["embeddings"][0] == split["embeddings"][2]
    for got in split_again:
        assert got["cached"] == [True, True] and np.allclose(got["embeddings"], single_again[0]["embeddings"])


def test_front_ends_reach_the_engine_without_writing_to_the_filesystem(
    catalog_file: Path, tmp_path: Path
) -> None:
    """The engine hands each front-end its end of a socket pair, so a server with front-ends needs no writable
    temporary directory (a read-only root filesystem): with TMPDIR an empty directory, requests are answered
    and nothing is made there, also after a front-end is replaced."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {**_env(catalog_file, 2), "TMPDIR": str(temporary)}
    with server_process(env, tmp_path / "server.log", timeout=120) as (url, proc):
        r = httpx.post(f"{url}/v1/embeddings", json={"input": TEXTS}, timeout=60)
        assert r.status_code == 200 and len(r.json()["data"]) == len(TEXTS)
        victim = min(_wait_for_frontends(proc.pid, 2))
        os.kill(victim, signal.SIGKILL)
        for i in range(8):  # the other front-end serves meanwhile
            assert httpx.post(f"{url}/v1/embeddings", json={"input": f"meanwhile {i}"}).status_code == 200
        assert victim not in _wait_for_frontends(proc.pid, 2)
        for i in range(8):  # both again, the replacement over its own socket pair
            assert httpx.post(f"{url}/v1/embeddings", json={"input": f"after {i}"}).status_code == 200
        assert list(temporary.iterdir()) == []
