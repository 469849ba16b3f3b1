"""Logs an operator can use: one access line per request (never the input), JSON lines as an option, the
request id echoed, a line when a model starts loading, and rate-limited warnings."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import httpx
import pytest

from embedserver.logs import EveryFewSeconds
from embedserver_testing.server_process import server_process

SECRET = "a text that must never reach the log"


def _wait_for(log: Path, predicate: object, timeout: float = 5.0) -> list[str]:
    """The log's lines once `predicate(lines)` holds (front-ends write from their own processes)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = log.read_text().splitlines()
        if predicate(lines) or time.monotonic() > deadline:  # type: ignore[operator]
            return lines
        time.sleep(0.1)


@pytest.mark.slow
def test_json_access_log_with_front_ends(tiny_qwen3: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    env = {"MODEL_NAME": str(tiny_qwen3), "HF_HUB_OFFLINE": "1", "HTTP_WORKERS": "2", "LOG_FORMAT": "json"}
    with server_process(env, log, 120) as (url, _):
        given = httpx.post(
            f"{url}/v1/embeddings", json={"input": [SECRET, "two"]}, headers={"x-request-id": "abc-123"}
        )
        made = httpx.post(f"{url}/embed", json={"text": SECRET})
        refused = httpx.post(f"{url}/v1/embeddings", json={"input": ""})
        assert given.headers["x-request-id"] == "abc-123" and given.status_code == 200
        assert len(made.headers["x-request-id"]) == 16 and refused.status_code == 400
        # Each front-end writes its own access lines: wait for the three requests' own (not just any three,
        # which the start-up's health checks could be).
        ids = ["abc-123", made.headers["x-request-id"], refused.headers["x-request-id"]]
        lines = _wait_for(log, lambda ls: all(any(f'"{id_}"' in line for line in ls) for id_ in ids))
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(records) == len([line for line in lines if line.strip()]), "every line is JSON"
    by_id = {r.get("request_id"): r for r in records if r["logger"] == "embedserver.access"}
    first = by_id["abc-123"]
    assert (first["method"], first["path"], first["status"], first["texts"]) == (
        "POST",
        "/v1/embeddings",
        200,
        2,
    )
    assert first["tokens"] == given.json()["usage"]["prompt_tokens"] and first["duration_ms"] > 0
    assert by_id[made.headers["x-request-id"]]["tokens"] == made.json()["tokens"]
    assert by_id[refused.headers["x-request-id"]]["status"] == 400
    assert any(r["message"].startswith("loading model") for r in records)
    assert SECRET not in log.read_text()


@pytest.mark.slow
def test_access_log_can_be_turned_off(tiny_qwen3: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    env = {"MODEL_NAME": str(tiny_qwen3), "HF_HUB_OFFLINE": "1", "HTTP_WORKERS": "0", "ACCESS_LOG": "false"}
    with server_process(env, log, 120) as (url, _):
        assert httpx.post(f"{url}/v1/embeddings", json={"input": "x"}).status_code == 200
        time.sleep(0.3)
    text = log.read_text()
    assert "embedserver.access" not in text and " INFO embedserver.service.registry: loading model" in text


def test_warnings_are_rate_limited_and_count_what_they_held(caplog: pytest.LogCaptureFixture) -> None:
    warnings = EveryFewSeconds(logging.getLogger("test.rate"), interval=0.2)
    with caplog.at_level(logging.WARNING, logger="test.rate"):
        for _ in range(50):
            warnings.warn("429", "refused")
        warnings.warn("499", "gone")
        time.sleep(0.25)
        warnings.warn("429", "refused")
    assert [r.getMessage() for r in caplog.records] == [
        "refused",
        "gone",
        "refused (49 more since the last such line)",
    ]
