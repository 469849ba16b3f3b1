"""Model registry: load once under concurrency, LRU eviction within MAX_MODELS, busy models stay, failures 503."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from embedserver.batching import BatchLimits
from embedserver.catalog import Catalog, ModelSpec
from embedserver.device import mlx_executor
from embedserver.engine import Engine
from embedserver.errors import ModelUnavailable
from embedserver.loader import ModelLoadError, load_engine
from embedserver.metrics import Metrics
from embedserver.registry import ModelRegistry


class CountingLoader:
    def __init__(self, delay: float = 0.0, fail: set[str] | None = None) -> None:
        self.loads: list[str] = []
        self.delay = delay
        self.fail = fail or set()

    def __call__(self, spec: ModelSpec) -> Engine:
        self.loads.append(spec.name)
        time.sleep(self.delay)  # runs on the MLX thread, like a real load
        if spec.name in self.fail:
            raise ModelLoadError(f"{spec.name}: corrupt weights")
        return load_engine(spec)


def _registry(tiny_qwen3: Path, loader: CountingLoader, max_models: int = 2) -> ModelRegistry:
    specs = {n: ModelSpec(name=n, source=str(tiny_qwen3)) for n in ("a", "b", "c")}
    return ModelRegistry(
        Catalog(specs, default="a"),
        default="a",
        max_models=max_models,
        limits=BatchLimits(max_size=8, max_tokens=4096, wait_s=0.001, max_queue=100),
        loader=loader,
        executor=mlx_executor,
        metrics=Metrics(),
    )


async def test_concurrent_first_requests_load_once(tiny_qwen3: Path) -> None:
    loader = CountingLoader(delay=0.2)
    registry = _registry(tiny_qwen3, loader)

    async def use() -> str:
        async with registry.acquire("b") as slot:
            return slot.status

    assert await asyncio.gather(*(use() for _ in range(10))) == ["ready"] * 10
    assert loader.loads == ["b"]
    await registry.close()


async def test_least_recently_used_is_evicted_but_never_the_default(tiny_qwen3: Path) -> None:
    loader = CountingLoader()
    registry = _registry(tiny_qwen3, loader, max_models=2)
    await registry.load("a")
    await registry.load("b")
    await registry.load("c")  # room for two: b goes (a is the default)
    slots = registry.slots()
    assert slots["a"].status == "ready" and slots["c"].status == "ready"
    assert slots["b"].status == "unloaded" and slots["b"].engine is None
    await registry.load("b")  # reload on demand; now c is the LRU non-default
    assert registry.slots()["c"].status == "unloaded"
    assert loader.loads == ["a", "b", "c", "b"]
    await registry.close()


async def test_a_model_in_use_is_never_evicted(tiny_qwen3: Path) -> None:
    registry = _registry(tiny_qwen3, CountingLoader(), max_models=2)
    await registry.load("a")
    async with registry.acquire("b"):
        with pytest.raises(ModelUnavailable) as info:
            await registry.load("c")
        assert info.value.status == 503 and "in use" in info.value.message
        assert registry.slots()["b"].status == "ready"
    await registry.load("c")  # once b is released it can go
    await registry.close()


async def test_failed_load_is_503_with_reason_and_retried_after_backoff(tiny_qwen3: Path) -> None:
    loader = CountingLoader(fail={"b"})
    registry = _registry(tiny_qwen3, loader)
    with pytest.raises(ModelUnavailable, match="corrupt weights") as info:
        await registry.load("b")
    assert info.value.headers["Retry-After"]
    with pytest.raises(ModelUnavailable):
        await registry.load("b")  # within the backoff: no new attempt
    assert loader.loads == ["b"]
    registry.slots()["b"].retry_at = 0  # backoff elapsed
    loader.fail.clear()
    assert (await registry.load("b")).status == "ready"
    assert (await registry.load("a")).status == "ready"  # other models were never affected
    await registry.close()
