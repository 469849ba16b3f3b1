"""Overload: bounded admission per model answers 429 at once, other models keep serving, and a short run of
benchmarks/overload.py (open-loop arrivals at 5x capacity) sees only 200s and 429s."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from embedserver.server.engine_app import create_app
from embedserver.settings import Settings
from tests.conftest import started

ROOT = Path(__file__).resolve().parent.parent


async def test_a_full_backlog_is_429_at_once_and_other_models_keep_serving(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(max_queue_texts=8, cache_max_entries=0)
    app = create_app(settings)
    async with started(app) as client:
        await client.post("/v1/embeddings", json={"input": "warm"})
        # Hold tiny's batches on the event loop (not the MLX thread, which every model shares).
        loaded = app.state.server.service.registry.slots()["tiny"].loaded
        assert loaded is not None
        worker = loaded.worker
        release = asyncio.Event()
        forward = worker._forward

        async def held(batch: Any) -> Any:
            await release.wait()
            return await forward(batch)

        worker._forward = held
        accepted = asyncio.create_task(
            client.post("/v1/embeddings", json={"input": [f"accepted {i}" for i in range(6)]})
        )
        await asyncio.sleep(0.2)
        began = time.perf_counter()
        refused = await client.post("/v1/embeddings", json={"input": ["a", "b", "c"]})
        assert time.perf_counter() - began < 1.0  # answered, not queued behind the held batch
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        error = refused.json()["error"]
        assert error["code"] == "overloaded" and error["type"] == "rate_limit_error"
        fits = asyncio.create_task(client.post("/v1/embeddings", json={"input": ["d", "e"]}))
        other = await client.post("/v1/embeddings", json={"model": "minilm", "input": "another model"})
        assert other.status_code == 200
        release.set()
        assert (await accepted).status_code == 200 and (await fits).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'embedserver_rejected_total{model="tiny"} 3.0' in metrics


@pytest.mark.slow
def test_overload_script_sheds_load_with_only_200_and_429(tmp_path: Path) -> None:
    out = tmp_path / "overload.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m", "benchmarks.overload",
            "--seconds", "5", "--capacity-s", "3", "--idle-s", "3", "--json", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )  # fmt: skip
    assert out.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["statuses"]) <= {"200", "429"} and result["statuses"].get("429", 0) > 0
    assert result["checks"]["429s_well_formed"] and result["checks"]["no_client_errors"]
    assert result["checks"]["serves_after"], run.stdout + run.stderr
