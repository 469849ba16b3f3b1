"""What every answer carries, whichever layer or route gives it: an unexpected error's 500 in OpenAI's shape,
the headers every answer carries, and its place in the request metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from embedserver.server.engine_app import create_app
from embedserver.settings import Settings
from tests.conftest import metric_sample, started


def _stamped(response: httpx.Response) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    assert len(response.headers["x-request-id"]) == 16


@pytest.mark.parametrize("fast_lane", [True, False])
async def test_an_unexpected_error_is_a_500_in_openais_shape_with_every_header(
    make_settings: Callable[..., Settings], fast_lane: bool
) -> None:
    app = create_app(make_settings(fast_lane=fast_lane))

    async def broken(call: Any) -> Any:
        raise RuntimeError("a bug")

    # The framework answers its 500 and raises the error again (for the server's log); the fast lane answers
    # and logs it itself.
    async with started(app, raise_app_exceptions=False) as client:
        app.state.embedder.embed = broken
        answer = await client.post("/v1/embeddings", json={"input": "x"})
        assert answer.status_code == 500
        assert answer.json() == {
            "error": {"message": "internal server error", "type": "server_error", "param": None, "code": None}
        }
        _stamped(answer)
        metrics = (await client.get("/metrics")).text
    assert metric_sample(metrics, 'embedserver_requests_total{endpoint="/v1/embeddings",status="500"}') == 1


async def test_a_refused_host_is_answered_with_every_header_and_counted(
    make_settings: Callable[..., Settings],
) -> None:
    async with started(create_app(make_settings())) as client:
        refused = await client.get("/v1/models", headers={"host": "rebound.attacker.example"})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_host"
        _stamped(refused)
        metrics = (await client.get("/metrics")).text
    assert metric_sample(metrics, 'embedserver_requests_total{endpoint="unmatched",status="400"}') == 1
