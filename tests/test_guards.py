"""Body size limit, API keys and readiness, through the real app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from embedserver.server.engine_app import create_app
from embedserver.settings import Settings
from tests.conftest import started


@pytest.fixture
async def guarded(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(api_key="key-one,key-two", max_body_bytes=4096)
    async with started(create_app(settings)) as client:
        yield client


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


async def test_requests_without_a_valid_key_are_401(guarded: httpx.AsyncClient) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic key-one"},
        {"Authorization": "Bearer"},
    ):
        r = await guarded.post("/v1/embeddings", json={"input": "x"}, headers=headers)
        assert _error(r, 401)["code"] == "invalid_api_key"
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert (await guarded.get("/models")).status_code == 401


async def test_every_configured_key_works(guarded: httpx.AsyncClient) -> None:
    for key in ("key-one", "key-two"):
        r = await guarded.post(
            "/v1/embeddings", json={"input": "x"}, headers={"Authorization": f"Bearer {key}"}
        )
        assert r.status_code == 200


async def test_health_ready_and_metrics_stay_open(guarded: httpx.AsyncClient) -> None:
    public = await guarded.get("/health")
    # Without the key: the status alone; versions, paths, memory and load errors are for the operator.
    assert public.status_code == 200 and public.json() == {"status": "ok"}
    full = await guarded.get("/health", headers={"Authorization": "Bearer key-one"})
    assert full.status_code == 200 and {"device", "memory", "models", "version"} <= set(full.json())
    r = await guarded.get("/ready")
    assert r.status_code == 200 and r.json()["ready"] is True
    metrics = await guarded.get("/metrics")
    assert metrics.status_code == 200


async def test_metrics_can_require_the_key(make_settings: Callable[..., Settings]) -> None:
    async with started(create_app(make_settings(api_key="k", metrics_require_key=True))) as client:
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers={"Authorization": "Bearer k"})).status_code == 200


async def test_body_over_the_limit_is_413_before_it_is_read(guarded: httpx.AsyncClient) -> None:
    auth = {"Authorization": "Bearer key-one"}
    big = {"input": "word " * 2000}  # ~10 kB, the limit is 4 kB
    r = await guarded.post("/v1/embeddings", json=big, headers=auth)
    assert _error(r, 413)["code"] == "request_too_large"


async def test_chunked_body_over_the_limit_is_413(guarded: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"input": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    r = await guarded.post(
        "/v1/embeddings",
        content=chunks(),
        headers={"Authorization": "Bearer key-one", "content-type": "application/json"},
    )
    assert _error(r, 413)["code"] == "request_too_large"
    # and the server goes on serving
    ok = await guarded.post(
        "/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Bearer key-one"}
    )
    assert ok.status_code == 200


async def test_ready_is_503_until_the_default_model_serves(make_settings: Callable[..., Settings]) -> None:
    async with started(create_app(make_settings(model_name="missing"))) as client:
        r = await client.get("/ready")
        assert r.status_code == 503 and r.json() == {
            "ready": False,
            "default_model": "missing",
            "status": "failed",
        }


async def test_draining_turns_readiness_off_and_refuses_new_work(client: httpx.AsyncClient) -> None:
    from embedserver.api.state import ServerState

    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    state: ServerState = transport.app.state.server  # type: ignore[attr-defined]
    state.service.draining = True  # what SIGTERM does (embedserver.server.http_server.DrainingServer)
    r = await client.get("/ready")
    assert r.status_code == 503 and r.json()["status"] == "draining"
    r = await client.post("/v1/embeddings", json={"input": "late"})
    assert _error(r, 503)["code"] == "shutting_down"
    assert (await client.get("/health")).status_code == 200  # alive, just not taking work


async def test_dead_worker_fails_its_requests_with_503_and_is_restarted_on_its_own(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import embedserver.batching.worker as batching
    from embedserver.batching.planning import plan_batches as real

    calls = {"n": 0}

    def broken_once(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("bug in the batch planner")
        return real(*args, **kwargs)

    monkeypatch.setattr(batching, "plan_batches", broken_once)
    r = await client.post("/v1/embeddings", json={"input": "first"})
    assert _error(r, 503)["code"] == "model_unavailable"
    health = (await client.get("/health")).json()
    assert (
        health["models"]["tiny"]["status"] == "worker_failed"
        and "bug in the batch planner" in (health["models"]["tiny"]["error"])
    )
    assert (await client.get("/ready")).status_code == 503
    # Restarted on its own, with no request asking for it.
    for _ in range(50):
        await asyncio.sleep(0.1)
        if (await client.get("/ready")).status_code == 200:
            break
    assert (await client.get("/ready")).status_code == 200
    assert (await client.get("/health")).json()["models"]["tiny"]["status"] == "ready"
    r = await client.post("/v1/embeddings", json={"input": "second"})
    assert r.status_code == 200
    assert 'embedserver_worker_restarts_total{model="tiny"} 1.0' in (await client.get("/metrics")).text


async def test_a_host_header_naming_another_site_is_refused(make_settings: Callable[..., Settings]) -> None:
    """DNS rebinding: a page that makes a browser send to 127.0.0.1 under its own name gets a 400, on a
    server bound to loopback; names meaning this machine pass, with or without a port."""
    async with started(create_app(make_settings())) as client:
        refused = await client.get("/v1/models", headers={"host": "rebound.attacker.example"})
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "invalid_host"
        assert "'rebound.attacker.example'" in refused.json()["error"]["message"]
        for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000"):
            assert (await client.get("/v1/models", headers={"host": host})).status_code == 200, host
    domain = make_settings(allowed_hosts="*.example.com, embed.internal")
    async with started(create_app(domain)) as client:
        for host, status in (("api.example.com", 200), ("embed.internal:80", 200), ("example.org", 400)):
            assert (await client.get("/v1/models", headers={"host": host})).status_code == status, host
    anywhere = make_settings(host="0.0.0.0")  # containers: load balancers send names of their own
    async with started(create_app(anywhere)) as client:
        assert (await client.get("/v1/models", headers={"host": "embed-svc.default"})).status_code == 200


async def test_not_ready_until_every_front_end_has_its_tokenizer(
    make_settings: Callable[..., Settings],
) -> None:
    """With front-ends, each loads the default model's tokenizer and reports it; until all have, their first
    requests would wait for that load, so a load balancer is told to wait."""
    app = create_app(make_settings())
    async with started(app) as client:
        state = app.state.server
        state.cold_frontends = 1
        r = await client.get("/ready")
        assert r.status_code == 503 and r.json()["status"] == "warming"
        assert (await client.get("/health")).status_code == 503
        state.cold_frontends -= 1  # what the engine does on the front-end's report
        assert (await client.get("/ready")).json() == {
            "ready": True,
            "default_model": "tiny",
            "status": "ready",
        }
