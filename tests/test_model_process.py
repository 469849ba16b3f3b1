"""MODEL_PROCESS: each model in a process of its own, fed batches by the engine's event loop. The vectors equal
the in-process server's, passes overlap there, a pass that fails there fails only its requests, and a model
whose process dies answers 503 and is loaded again in a new one."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import psutil
import pytest

from embedserver.batching.launched import LaunchedPass
from embedserver.runtime import device
from embedserver.runtime.model_files import ModelFiles
from embedserver.server import ipc
from embedserver.server.engine_app import create_app
from embedserver.server.model_process import DONE, FAILED, LAUNCHED, ModelProcess, PassFailed
from embedserver.settings import Settings
from tests.conftest import started

TEXTS = [f"text number {i} " + "word " * (i % 7) for i in range(24)]


def _vectors(body: dict[str, Any]) -> np.ndarray:
    return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype=np.float32) for d in body["data"]])


async def _embed_each(client: httpx.AsyncClient, texts: list[str]) -> list[np.ndarray]:
    """One request per text, all at once (batches form), in order."""

    async def one(text: str) -> np.ndarray:
        r = await client.post("/v1/embeddings", json={"input": text, "encoding_format": "base64"})
        assert r.status_code == 200, r.text
        vector: np.ndarray = _vectors(r.json())[0]
        return vector

    return list(await asyncio.gather(*(one(t) for t in texts)))


def _process(app) -> ModelProcess:  # type: ignore[no-untyped-def]
    slot = app.state.server.service.registry.slots()["tiny"]
    assert slot.loaded is not None
    runner = slot.loaded.runner
    assert isinstance(runner, ModelProcess)
    return runner


async def test_vectors_equal_the_in_process_servers(make_settings: Callable[..., Settings]) -> None:
    async with started(create_app(make_settings(cache_max_entries=0))) as client:
        expected = await _embed_each(client, TEXTS)
        batch = await client.post("/v1/embeddings", json={"input": TEXTS[:5], "encoding_format": "base64"})
    app = create_app(make_settings(cache_max_entries=0, model_process=True))
    async with started(app) as client:
        runner = _process(app)
        assert runner.alive and runner._process.pid != os.getpid()
        if sys.platform == "linux":  # named for `ps` and `top` (and told from the front-ends by it)
            assert psutil.Process(runner._process.pid).name() == "model-tiny"
        got = await _embed_each(client, TEXTS)
        many = await client.post("/v1/embeddings", json={"input": TEXTS[:5], "encoding_format": "base64"})
        models = (await client.get("/v1/models")).json()
        memory = (await client.get("/health")).json()["memory"]
        own = device.memory()  # this (the engine's) process: under MODEL_PROCESS no MLX work happens here
    # The model's memory is in its own process (the tiny model's weights, ~38 MB), and /health adds it to the
    # engine's. (Not compared with the in-process server's: MLX's counters there are this test process's, which
    # holds other tests' models too.)
    assert runner.memory["mlx_active_bytes"] > 10 * 2**20
    added = memory["mlx_active_bytes"] - own["mlx_active_bytes"]
    assert abs(added - runner.memory["mlx_active_bytes"]) < 2**20
    for a, b in zip(got, expected, strict=True):
        assert a.shape == (64,) and np.allclose(a, b, atol=1e-4)
    assert np.allclose(_vectors(many.json()), _vectors(batch.json()), atol=1e-4)
    assert abs(float(np.linalg.norm(got[0])) - 1.0) < 1e-4
    assert any(m["id"] == "tiny" for m in models["data"])
    assert not runner.alive  # stopped with the server


async def test_passes_overlap_in_the_model_process(make_settings: Callable[..., Settings]) -> None:
    """Forced onto the overlapped path (a GPU's) on this CPU: every pass launched, then collected there."""
    app = create_app(make_settings(cache_max_entries=0, model_process=True))
    async with started(app) as client:
        runner = _process(app)
        launched: list[bool] = []
        launch = runner.launch

        async def counting(pass_, alone):  # type: ignore[no-untyped-def]
            await launch(pass_, lambda: False)  # never run whole: always the LAUNCH, then DONE, exchange
            launched.append(pass_.collected)

        runner.launch = counting  # type: ignore[method-assign]
        runner._overlap = True  # as on a GPU
        got = await _embed_each(client, TEXTS)
    async with started(create_app(make_settings(cache_max_entries=0))) as client:
        expected = await _embed_each(client, TEXTS)
    assert launched and not any(launched)  # queued there, answered later by its collector
    for a, b in zip(got, expected, strict=True):
        assert np.allclose(a, b, atol=1e-4)


async def test_a_model_whose_process_dies_is_unloaded_then_loaded_again_unasked(
    make_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_settings(cache_max_entries=0, model_process=True))
    registry = app.state.server.service.registry
    async with started(app) as client:
        first = _process(app)
        os.kill(first._process.pid, signal.SIGKILL)  # type: ignore[arg-type]
        for _ in range(500):  # the registry hears of it from the socket closing
            if not registry.slots()["tiny"].loaded:
                break
            await asyncio.sleep(0.01)
        health = await client.get("/health")
        assert health.status_code == 503  # not ready: a balancer sends its traffic elsewhere meanwhile
        for _ in range(1200):  # loaded again after the backoff, with no request asking for it
            if (await client.get("/health")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        second = _process(app)
        assert second is not first and second.alive and not first.alive
        r = await client.post(
            "/v1/embeddings", json={"input": "after the crash", "encoding_format": "base64"}
        )
        assert r.status_code == 200, r.text


async def test_a_model_that_cannot_load_in_its_process_fails_with_the_reason(
    make_settings: Callable[..., Settings], tiny_qwen3: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_qwen3, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    app = create_app(make_settings(model_process=True, model_name=str(broken)))
    async with started(app) as client:
        health = await client.get("/health")
        r = await client.post("/v1/embeddings", json={"input": "x"})
    assert health.status_code == 503 and r.status_code == 503
    assert "unsupported model_type 'gpt2'" in r.json()["error"]["message"]


async def test_reranking_runs_in_the_model_process(make_settings: Callable[..., Settings]) -> None:
    settings = {"rerank_model": "tiny-rerank", "cache_max_entries": 0}
    body = {"model": "tiny-rerank", "query": "what is it", "documents": TEXTS[:3]}
    async with started(create_app(make_settings(**settings))) as client:
        await client.post("/v1/embeddings", json={"input": "load"})
        expected = (await client.post("/v1/rerank", json=body)).json()
    async with started(create_app(make_settings(model_process=True, **settings))) as client:
        await client.post("/v1/embeddings", json={"input": "load"})
        r = await client.post("/v1/rerank", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert [x["index"] for x in got["results"]] == [x["index"] for x in expected["results"]]
    for a, b in zip(got["results"], expected["results"], strict=True):
        assert abs(a["relevance_score"] - b["relevance_score"]) < 1e-4


class _ExitedProcess:
    """Stands for the model's process where the test itself answers on the socket."""

    exitcode = 0

    def is_alive(self) -> bool:
        return False

    def join(self, timeout: float | None = None) -> None:
        pass


def _scripted_peer(sock: socket.socket, answers: dict[int, list[int]]) -> threading.Thread:
    """The model's side of the socket, scripted: to the Nth pass it receives it sends answers[N] (frame kinds:
    LAUNCHED, DONE with one 4-float vector a sequence, or FAILED), in order."""

    def serve() -> None:
        with sock:
            for n, (_, id_, meta, _) in enumerate(ipc.recv_frames(sock)):
                rows = len(meta["lengths"])
                done = {"started": 1.0, "ended": 2.0, "bad": 0, "rows": rows, "columns": 4, "memory": {}}
                for kind in answers[n]:
                    if kind == DONE:
                        sock.sendall(ipc.frame(kind, id_, done, np.ones((rows, 4), np.float32).tobytes()))
                    else:
                        sock.sendall(
                            ipc.frame(kind, id_, {"message": "boom"} if kind == FAILED else {"started": 1.0})
                        )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


async def test_a_pass_that_fails_in_the_model_process_fails_that_pass_alone(
    tiny_qwen3: Path, make_settings: Callable[..., Settings]
) -> None:
    """A FAILED answer, whole or after the pass was launched, is that pass's outcome (the worker retries its
    texts alone, as for any failed pass); the passes around it are answered, and the link stays up."""
    ours, theirs = socket.socketpair()
    peer = _scripted_peer(theirs, {0: [FAILED], 1: [LAUNCHED, FAILED], 2: [LAUNCHED, DONE]})
    meta = {
        "name": "tiny", "source": str(tiny_qwen3), "revision": "r", "pooling": "last", "max_length": 512,
        "query_task": None, "task": "embed", "dimension": 4, "bucket_rows": False, "split_tokens": 64,
        "overlap_passes": True, "end_token": None, "memory": {},
    }  # fmt: skip
    process = ModelProcess(_ExitedProcess(), ours, meta, ModelFiles(tiny_qwen3, "r"), make_settings())  # type: ignore[arg-type]
    try:
        with pytest.raises(PassFailed, match="boom"):
            await asyncio.wait_for(process.run([np.array([1, 2, 3], np.int32)]), 10)

        def launched_pass(texts: int) -> LaunchedPass:
            loop = asyncio.get_running_loop()
            items = [
                SimpleNamespace(
                    ids=np.array([5, 6], np.int32), request=SimpleNamespace(future=loop.create_future())
                )
                for _ in range(texts)
            ]
            return LaunchedPass(items, (texts, 2))  # type: ignore[arg-type]

        failing, fine = launched_pass(2), launched_pass(3)
        for each in (failing, fine):
            await asyncio.wait_for(process.launch(each, alone=lambda: False), 10)
            assert not each.collected  # launched there, to be collected
            await asyncio.wait_for(process.collected(each), 10)
        assert isinstance(failing.error, PassFailed) and failing.vectors is None
        assert fine.error is None and fine.vectors is not None and fine.vectors.shape == (3, 4)
    finally:
        await process.aclose()
        peer.join(5)
