"""The engine's side of a front-end's request (`EmbeddingService.start_prepared`): answered through one
callback with the model's own vectors, or dropped when its caller leaves."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from embedserver.metrics import Metrics
from embedserver.runtime.device import mlx_executor
from embedserver.runtime.runner import ModelRunner
from embedserver.service.cache import EmbeddingCache
from embedserver.service.embeddings import EmbeddingService
from embedserver.service.requests import PreparedRequest
from embedserver.settings import Settings
from tests.test_registry import CountingLoader, _registry


def _service(tiny_qwen3: Path) -> EmbeddingService:
    registry = _registry(tiny_qwen3, CountingLoader())
    return EmbeddingService(Settings(), registry, EmbeddingCache(0, 0), registry._metrics)


async def _answer_of(service: EmbeddingService, request: PreparedRequest) -> tuple[np.ndarray, list[bool]]:
    answers: list[tuple[np.ndarray, list[bool]] | BaseException] = []
    assert service.start_prepared(request, answers.append) is not None
    for _ in range(500):
        if answers:
            break
        await asyncio.sleep(0.01)
    (answer,) = answers
    assert not isinstance(answer, BaseException)
    return answer


async def test_a_prepared_request_gets_the_models_vectors_through_one_callback(tiny_qwen3: Path) -> None:
    service = _service(tiny_qwen3)
    try:
        slot = await service.registry.load("a")
        runner = slot.loaded.runner  # type: ignore[union-attr]
        assert isinstance(runner, ModelRunner)
        sequences = runner.tokenizer.encode_batch(["first text", "a second, longer text here"])
        raw, cached = await _answer_of(service, PreparedRequest("a", sequences, None))
        assert raw.shape == (2, runner.dimension) and cached == [False, False]
        # Each text alone, on the thread that owns MLX.
        alone = [
            await asyncio.get_running_loop().run_in_executor(mlx_executor(), runner.embed, [ids])
            for ids in sequences
        ]
        expected = np.concatenate(alone)
        assert np.allclose(raw, expected, atol=1e-4)
        assert slot.leases == 0 and slot.loaded.worker.admission.texts == 0  # type: ignore[union-attr]
    finally:
        await service.registry.close()


async def test_cancelling_a_prepared_request_frees_its_places_and_runs_nothing(
    tiny_qwen3: Path,
) -> None:
    service = _service(tiny_qwen3)
    try:
        slot = await service.registry.load("a")
        worker = slot.loaded.worker  # type: ignore[union-attr]
        answers: list[object] = []
        started = service.start_prepared(PreparedRequest("a", [[1, 2, 3], [4, 5]], None), answers.append)
        assert started is not None and worker.admission.texts == 2 and slot.leases == 1
        started.cancel()  # the front-end's caller left (a CANCEL frame)
        await asyncio.sleep(0)  # the future's callbacks run a loop turn later
        assert worker.admission.texts == 0 and slot.leases == 0
        for _ in range(100):
            if not worker.busy:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert answers == []
        metrics: Metrics = service.metrics
        assert metrics.registry.get_sample_value("embedserver_dropped_total", {"model": "a"}) == 2
        assert metrics.registry.get_sample_value("embedserver_texts_total", {"model": "a"}) in (None, 0.0)
    finally:
        await service.registry.close()


async def test_a_prepared_request_takes_what_the_cache_holds_and_computes_the_rest(tiny_qwen3: Path) -> None:
    registry = _registry(tiny_qwen3, CountingLoader())
    service = EmbeddingService(Settings(), registry, EmbeddingCache(100, 1 << 20), registry._metrics)
    try:
        slot = await registry.load("a")
        runner = slot.loaded.runner  # type: ignore[union-attr]
        assert isinstance(runner, ModelRunner)
        sequences = runner.tokenizer.encode_batch(["one", "two words", "three words here"])
        keys = [bytes([i]) * 20 for i in range(3)]
        first, _ = await _answer_of(service, PreparedRequest("a", sequences[1:2], keys[1:2]))
        raw, cached = await _answer_of(service, PreparedRequest("a", sequences, keys))
        assert cached == [False, True, False] and raw.shape == (3, runner.dimension)
        assert np.array_equal(raw[1], first[0])  # the cached vector itself
        alone = [
            await asyncio.get_running_loop().run_in_executor(mlx_executor(), runner.embed, [sequences[i]])
            for i in (0, 2)
        ]
        assert np.allclose(raw[[0, 2]], np.concatenate(alone), atol=1e-4)
        again, cached = await _answer_of(service, PreparedRequest("a", sequences, keys))
        assert cached == [True, True, True] and np.array_equal(again, raw)
        sample = registry._metrics.registry.get_sample_value
        assert sample("embedserver_cache_hits_total", {"model": "a"}) == 1 + 3
        assert sample("embedserver_cache_misses_total", {"model": "a"}) == 1 + 2
        assert slot.leases == 0 and slot.loaded.worker.admission.texts == 0  # type: ignore[union-attr]
    finally:
        await registry.close()
