"""Model registry: load once under concurrency, LRU eviction within MAX_MODELS, busy models stay, failures 503."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from embedserver.batching.limits import BatchLimits
from embedserver.catalog import Catalog, ModelSpec
from embedserver.errors import ModelUnavailable
from embedserver.metrics import Metrics
from embedserver.runtime.device import mlx_executor
from embedserver.runtime.device_policy import DevicePlan, ready_for_device, ready_for_device_steps
from embedserver.runtime.load_steps import ANY_THREAD, MLX_THREAD, LoadSteps
from embedserver.runtime.loader import load_runner, load_runner_steps
from embedserver.runtime.model_files import ModelFiles, ModelLoadError, resolve_source
from embedserver.runtime.runner import ModelRunner
from embedserver.server.engine_app import create_app
from embedserver.service.registry import ModelRegistry
from embedserver.settings import Settings
from embedserver.tokenization.token_ids import TokenIds
from tests.conftest import started

PLAN = DevicePlan(max_batch=8, max_tokens=4096)


class CountingLoader:
    def __init__(self, delay: float = 0.0, fail: set[str] | None = None) -> None:
        self.loads: list[str] = []
        self.delay = delay
        self.fail = fail or set()

    def __call__(self, spec: ModelSpec, files: ModelFiles) -> ModelRunner:
        self.loads.append(spec.name)
        time.sleep(self.delay)  # runs on the MLX thread, like a real load
        if spec.name in self.fail:
            raise ModelLoadError(f"{spec.name}: corrupt weights")
        return ready_for_device(load_runner(spec, files), PLAN)


def _fetch(spec: ModelSpec, download: bool) -> ModelFiles:
    return resolve_source(spec.source, download=download)


def _registry(tiny_qwen3: Path, loader: CountingLoader, max_models: int = 2) -> ModelRegistry:
    specs = {n: ModelSpec(name=n, source=str(tiny_qwen3)) for n in ("a", "b", "c")}
    return ModelRegistry(
        Catalog(specs, default="a"),
        default="a",
        max_models=max_models,
        limits=BatchLimits(max_size=8, max_tokens=4096, wait_s=0.001, max_queue=100),
        loader=loader,
        fetch=_fetch,
        executor=mlx_executor(),
        metrics=Metrics(),
    )


async def test_concurrent_first_requests_load_once(tiny_qwen3: Path) -> None:
    loader = CountingLoader(delay=0.2)
    registry = _registry(tiny_qwen3, loader)

    async def use() -> str:
        async with registry.acquire("b") as model:
            return model.runner.name

    assert await asyncio.gather(*(use() for _ in range(10))) == ["b"] * 10
    assert loader.loads == ["b"]
    await registry.close()


async def test_a_load_in_steps_lets_a_serving_model_run_between_them(tiny_qwen3: Path) -> None:
    """A load holds the MLX thread, where every pass runs: loaded in one call, a second model stalled the
    first one's requests for all of it (9.8 s for the 0.6B model on a 2-core VM). Loaded in steps, the
    serving model's passes run between two of them, and the steps run where each says."""
    threads: list[tuple[str, str]] = []
    stepping = threading.Event()
    steps_done: list[int] = []

    def slow_steps(spec: ModelSpec, files: ModelFiles) -> LoadSteps[ModelRunner]:
        threads.append(("first", threading.current_thread().name))
        yield ANY_THREAD
        threads.append(("any", threading.current_thread().name))
        yield MLX_THREAD
        threads.append(("mlx", threading.current_thread().name))
        for step in range(60):  # 3 s of MLX-thread work in steps of 50 ms
            stepping.set()
            time.sleep(0.05)
            steps_done.append(step)
            yield MLX_THREAD
        runner = yield from load_runner_steps(spec, files)
        return (yield from ready_for_device_steps(runner, PLAN))

    def loader(spec: ModelSpec, files: ModelFiles) -> ModelRunner | LoadSteps[ModelRunner]:
        return (
            slow_steps(spec, files) if spec.name == "b" else ready_for_device(load_runner(spec, files), PLAN)
        )

    registry = _registry(tiny_qwen3, loader)  # type: ignore[arg-type]
    try:
        async with registry.acquire("a") as model:
            tokenizer, worker = model.runner.tokenizer, model.worker
        loading = asyncio.create_task(registry.load("b"))
        while not stepping.is_set():
            await asyncio.sleep(0.01)
        vectors = await worker.submit(tokenizer.encode_batch(["served while b loads"]))
        assert vectors.shape == (1, model.runner.dimension)
        assert len(steps_done) < 60 and not loading.done()  # answered between two of b's steps
        assert (await loading).status == "ready"
        assert threads[0] == ("first", "mlx_0") and threads[2] == ("mlx", "mlx_0")
        assert not threads[1][1].startswith("mlx")
    finally:
        await registry.close()


async def test_the_worker_splits_batches_as_the_device_policy_says(tiny_qwen3: Path) -> None:
    """On CPU a pass costs little beyond its tokens: the loaded model's worker splits batches whose padding
    would more than double past a few dozen tokens (plan_batches)."""
    registry = _registry(tiny_qwen3, CountingLoader())
    try:
        async with registry.acquire("a") as model:
            assert model.runner.split_tokens == 64
            assert model.worker._split_tokens == model.runner.split_tokens
    finally:
        await registry.close()


async def test_a_loaded_model_and_everything_alive_then_leave_the_collectors_scans(tiny_qwen3: Path) -> None:
    """Full garbage collections scanned every long-lived object and held the GIL 60-100 ms under load; once a
    model is ready, what is alive (the model's Python objects included) is frozen out of later scans."""
    gc.unfreeze()
    registry = _registry(tiny_qwen3, CountingLoader())
    try:
        slot = await registry.load("a")
        assert gc.get_freeze_count() > 1000
        assert not any(gc.is_tracked(o) and o is slot.runner for o in gc.get_objects())
    finally:
        await registry.close()
        gc.unfreeze()


async def test_a_gpu_load_runs_one_full_collection(tiny_qwen3: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full collection holds the GIL 26-100 ms, stalling every other model's traffic: a GPU load (warm-up,
    release of MLX's cache, freeze) runs only the freeze's. Automatic collections are off to count ours."""
    from embedserver.runtime import device

    monkeypatch.setattr(device, "backend", lambda: "cuda")  # the GPU branch of the load
    monkeypatch.setattr(device, "bound_gpu_memory", lambda workspace: None)
    full: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            full.append(1)

    gc.unfreeze()
    gc.disable()
    gc.callbacks.append(count)
    registry = _registry(tiny_qwen3, CountingLoader())
    try:
        assert (await registry.load("a")).status == "ready"
        assert len(full) == 1
    finally:
        gc.callbacks.remove(count)
        gc.enable()
        await registry.close()
        gc.unfreeze()


async def test_an_evicted_model_is_freed_although_it_was_frozen(tiny_qwen3: Path) -> None:
    """The runner refers to itself (its compiled forward pass), so only the collector frees it; frozen at its
    load, it must still go when evicted, or its weights would stay on the device."""
    gc.unfreeze()
    registry = _registry(tiny_qwen3, CountingLoader(), max_models=2)
    try:
        await registry.load("a")
        evicted = weakref.ref((await registry.load("b")).runner)
        await registry.load("c")  # evicts b, the least recently used model that is not the default
        assert registry._slots["b"].runner is None
        assert evicted() is None
    finally:
        await registry.close()
        gc.unfreeze()


async def test_least_recently_used_is_evicted_but_never_the_default(tiny_qwen3: Path) -> None:
    loader = CountingLoader()
    registry = _registry(tiny_qwen3, loader, max_models=2)
    await registry.load("a")
    await registry.load("b")
    await registry.load("c")  # room for two: b goes (a is the default)
    slots = registry.slots()
    assert slots["a"].status == "ready" and slots["c"].status == "ready"
    assert slots["b"].status == "unloaded" and slots["b"].runner is None
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


async def test_eviction_waits_for_requests_in_flight(make_settings: Callable[..., Settings]) -> None:
    """Through the API: a model whose batch is running cannot be evicted for another; the other gets 503 with
    Retry-After, the running request completes unchanged, and once idle the model gives way."""
    gate = threading.Event()
    gate.set()

    def loader(spec: ModelSpec, files: ModelFiles) -> ModelRunner:
        runner = load_runner(spec, files)
        if spec.name == "tiny-mlx":
            embed = runner.embed

            def held(sequences: Sequence[TokenIds]) -> np.ndarray:
                gate.wait(timeout=60)
                return embed(sequences)

            runner.embed = held  # type: ignore[method-assign,assignment]
        return runner

    texts = [f"in flight {i}" for i in range(5)]
    async with started(create_app(make_settings(max_models=2, cache_max_entries=0), loader=loader)) as client:
        alone = (await client.post("/v1/embeddings", json={"model": "tiny-mlx", "input": texts})).json()
        gate.clear()
        try:
            running = asyncio.create_task(
                client.post(
                    "/v1/embeddings",
                    json={"model": "tiny-mlx", "input": texts},
                )
            )
            await asyncio.sleep(0.3)
            refused = await client.post("/v1/embeddings", json={"model": "minilm", "input": "x"})
            assert refused.status_code == 503 and refused.headers["retry-after"]
            assert "in use" in refused.json()["error"]["message"]
        finally:
            gate.set()
        done = await running
        assert done.status_code == 200
        expected = [d["embedding"] for d in alone["data"]]
        assert np.allclose([d["embedding"] for d in done.json()["data"]], expected, atol=1e-6)
        later = await client.post("/v1/embeddings", json={"model": "minilm", "input": "x"})
        assert later.status_code == 200
        models = (await client.get("/health")).json()["models"]
        assert models["tiny-mlx"]["status"] == "unloaded" and models["tiny"]["status"] == "ready"


def test_gpu_memory_bound_is_the_loaded_weights_plus_the_workspace() -> None:
    from embedserver.runtime.device import bound_gpu_memory

    weights = mx.ones((512, 512))
    mx.eval(weights)
    previous_limit = mx.get_memory_limit()
    previous_cache = mx.set_cache_limit(0)
    try:
        bound_gpu_memory(256 << 20)
        assert mx.get_memory_limit() == mx.get_active_memory() + (256 << 20)
        # The cache may hold at most the workspace too; set_cache_limit answers with the previous value.
        assert mx.set_cache_limit(0) == 256 << 20
    finally:
        mx.set_memory_limit(previous_limit)
        mx.set_cache_limit(previous_cache)


def test_gpu_memory_bound_stays_within_mlxs_own_limit() -> None:
    """A workspace larger than the card (the 32 GB default on a 24 GB GPU) gives MLX its own limit, not more."""
    from embedserver.runtime.device import _card_memory_limit, bound_gpu_memory

    card = _card_memory_limit()
    previous_limit = mx.get_memory_limit()
    previous_cache = mx.set_cache_limit(0)
    try:
        bound_gpu_memory(card * 4)
        assert mx.get_memory_limit() == card
        assert mx.set_cache_limit(0) == card - mx.get_active_memory()
    finally:
        mx.set_memory_limit(previous_limit)
        mx.set_cache_limit(previous_cache)


async def test_a_warm_up_shape_too_large_for_the_device_names_itself_and_the_limits(
    tiny_qwen3: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On GPUs every batch shape the limits allow runs once at load. When one does not fit (the 4B model at
    65,536 tokens on an 80 GB H100), the load fails with the shape and the settings to lower, not with MLX's
    bare allocation error."""
    from embedserver.runtime import device

    def loader(spec: ModelSpec, files: ModelFiles) -> ModelRunner:
        runner = load_runner(spec, files)
        embed = runner.embed

        def limited(batch: Sequence[TokenIds]) -> np.ndarray:
            if len(batch) * len(batch[0]) > 1024:
                raise RuntimeError("cudaMallocAsync(&data, size, stream) failed: out of memory")
            return embed(batch)

        runner.embed = limited  # type: ignore[method-assign]
        return ready_for_device(runner, PLAN)

    monkeypatch.setattr(device, "backend", lambda: "cuda")  # the GPU branch of the load
    monkeypatch.setattr(device, "bound_gpu_memory", lambda workspace: None)
    registry = ModelRegistry(
        Catalog({"a": ModelSpec(name="a", source=str(tiny_qwen3))}, default="a"),
        default="a",
        max_models=1,
        limits=BatchLimits(max_size=8, max_tokens=4096, wait_s=0.001, max_queue=100),
        loader=loader,
        fetch=_fetch,
        executor=mlx_executor(),
        metrics=Metrics(),
    )
    with pytest.raises(ModelUnavailable) as info:
        await registry.load("a")
    message = info.value.message
    assert "warm-up failed at a batch of 8 x 144 tokens" in message  # the first shape past 1,024 tokens
    assert "out of memory" in message and "MAX_BATCH_TOKENS (now 4096)" in message
    assert registry.slots()["a"].status == "failed"
    await registry.close()


def test_warmup_failure_carries_its_shape(tiny_qwen3: Path) -> None:
    from embedserver.runtime.runner import WarmupFailed

    runner = load_runner(ModelSpec(name="t", source=str(tiny_qwen3)))

    def failing(batch: Sequence[TokenIds]) -> np.ndarray:
        raise ValueError("no")

    runner.embed = failing  # type: ignore[method-assign]
    with pytest.raises(WarmupFailed) as info:
        runner.warmup()
    assert (info.value.rows, info.value.length) == (1, 16)
    assert isinstance(info.value.__cause__, ValueError)
