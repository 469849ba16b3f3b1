"""Loaded models: load on first use (once, however many requests ask at the same time), keep at most
MAX_MODELS, evict the least recently used one that has no work in flight, and never the default model.

A failed load is remembered with its reason (503 for that model only) and retried after a backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import mlx.core as mx

from embedserver.backoff import doubling
from embedserver.batching.worker import BatchLimits, BatchWorker
from embedserver.catalog import Catalog, ModelSpec
from embedserver.errors import ModelUnavailable
from embedserver.metrics import Metrics
from embedserver.runtime import device
from embedserver.runtime.runner import Engine, WarmupFailed
from embedserver.settings import DEFAULT_GPU_WORKSPACE_BYTES
from embedserver.tokenization.batcher import TokenizeBatcher
from embedserver.tuning.gc_freeze import collect_everything, freeze_long_lived

log = logging.getLogger(__name__)

Loader = Callable[[ModelSpec], Engine]
Status = Literal["unloaded", "loading", "ready", "failed"]

# Warm every bucketed shape up to this many tokens per text at load (longer texts pay their first-use cost).
_WARM_LENGTH = 512
_BACKOFF_MIN_S = 1.0
_BACKOFF_MAX_S = 60.0
# A dead batch worker is restarted on its own after this, doubling while it keeps dying within _DEATH_MEMORY_S.
_RESTART_MIN_S = 0.5
_DEATH_MEMORY_S = 300.0


@dataclass(eq=False)
class ModelSlot:
    spec: ModelSpec
    status: Status = "unloaded"
    engine: Engine | None = None
    worker: BatchWorker | None = None
    tokenize: TokenizeBatcher | None = None
    error: str | None = None
    leases: int = 0
    last_used: float = 0.0
    failures: int = 0
    retry_at: float = 0.0
    load_task: asyncio.Task[None] | None = None
    worker_deaths: int = 0
    last_death: float = 0.0

    @property
    def busy(self) -> bool:
        return self.leases > 0 or (self.worker is not None and self.worker.busy)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "source": self.spec.source}
        if self.engine is not None:
            out |= {
                "dimension": self.engine.dimension,
                "pooling": self.engine.pooling,
                "revision": self.engine.revision,
            }
        if self.worker is not None and not self.worker.alive and self.status == "ready":
            out["status"] = "worker_failed"
            out["error"] = self.worker.failure
        if self.error:
            out["error"] = self.error
        return out


class ModelRegistry:
    def __init__(
        self,
        catalog: Catalog,
        *,
        default: str,
        max_models: int,
        limits: BatchLimits,
        loader: Loader,
        executor: Executor,
        metrics: Metrics,
        tokenize_rounds: int = 1,
        compile_forward: bool = False,
        gpu_workspace_bytes: int = DEFAULT_GPU_WORKSPACE_BYTES,
    ) -> None:
        self.catalog = catalog
        self._compile = compile_forward
        self._gpu_workspace = gpu_workspace_bytes
        self._tokenize_rounds = tokenize_rounds
        self.default = default
        self.max_models = max_models
        self._limits = limits
        self._loader = loader
        self._executor = executor
        self._metrics = metrics
        self._slots: dict[str, ModelSlot] = {}
        self._admin = asyncio.Lock()  # loads and evictions happen one at a time
        self._restart_timers: dict[str, asyncio.TimerHandle] = {}
        self._restarts: set[asyncio.Task[None]] = set()

    def slots(self) -> dict[str, ModelSlot]:
        return dict(self._slots)

    @asynccontextmanager
    async def acquire(self, name: str | None) -> AsyncIterator[ModelSlot]:
        """A ready model, held (not evictable) until the block exits."""
        slot = await self._ready(self.catalog.resolve(name or self.default))
        slot.leases += 1
        slot.last_used = time.monotonic()
        try:
            yield slot
        finally:
            slot.leases -= 1

    async def load(self, name: str) -> ModelSlot:
        return await self._ready(self.catalog.resolve(name))

    async def _ready(self, spec: ModelSpec) -> ModelSlot:
        while True:
            slot = self._slots.setdefault(spec.name, ModelSlot(spec))
            if slot.status == "ready" and slot.worker is not None and slot.worker.alive:
                return slot
            if slot.load_task is None:
                if slot.status == "failed" and time.monotonic() < slot.retry_at:
                    raise _unavailable(slot)
                slot.status = "loading"
                slot.load_task = asyncio.create_task(self._load(slot), name=f"load-{spec.name}")
            # shield: one caller giving up must not cancel the load that others wait for.
            await asyncio.shield(slot.load_task)

    async def _load(self, slot: ModelSlot) -> None:
        name = slot.spec.name
        try:
            async with self._admin:
                started = time.perf_counter()
                if slot.worker is not None:  # its worker died: replace the worker, keep the weights
                    await slot.worker.stop()
                engine = slot.engine
                if engine is None:
                    try:
                        await self._make_room(slot)
                    except ModelUnavailable:
                        slot.status = "unloaded"  # no room right now: not a failure of the model itself
                        raise
                    loop = asyncio.get_running_loop()
                    engine = await loop.run_in_executor(self._executor, self._load_and_warm, slot.spec)
                worker = BatchWorker(
                    name,
                    engine.embed,
                    limits=self._limits,
                    metrics=self._metrics,
                    executor=self._executor,
                    bucketed_rows=engine.bucket_rows,
                )
                worker.on_death = lambda: self._worker_died(slot)
                worker.start()
                slot.engine, slot.worker = engine, worker
                slot.tokenize = TokenizeBatcher(engine.tokenizer, rounds=self._tokenize_rounds)
                slot.status, slot.error, slot.failures = "ready", None, 0
                self._metrics.model_loads.labels(name, "ok").inc()
                self._metrics.model_load_seconds.labels(name).observe(time.perf_counter() - started)
                self._metrics.models_loaded.set(self._loaded_count())
                log.info(
                    "model %s ready (dim %d) in %.1fs", name, engine.dimension, time.perf_counter() - started
                )
                freeze_long_lived()  # the model's Python objects live as long as it is loaded
        except ModelUnavailable:
            raise
        except Exception as exc:
            slot.failures += 1
            slot.status, slot.error, slot.engine, slot.worker = "failed", _reason(exc), None, None
            slot.retry_at = time.monotonic() + doubling(_BACKOFF_MIN_S, slot.failures, _BACKOFF_MAX_S)
            self._metrics.model_loads.labels(name, "error").inc()
            log.error("model %s failed to load: %s", name, slot.error)
            raise _unavailable(slot) from exc
        finally:
            slot.load_task = None

    def _worker_died(self, slot: ModelSlot) -> None:
        """Restart a dead worker after a short backoff, without waiting for a request to ask for it."""
        now = time.monotonic()
        slot.worker_deaths = slot.worker_deaths + 1 if now - slot.last_death < _DEATH_MEMORY_S else 1
        slot.last_death = now
        delay = doubling(_RESTART_MIN_S, slot.worker_deaths, _BACKOFF_MAX_S)
        log.warning("worker for %s died; restarting it in %.1fs", slot.spec.name, delay)
        timer = asyncio.get_running_loop().call_later(delay, self._restart, slot)
        self._restart_timers[slot.spec.name] = timer

    def _restart(self, slot: ModelSlot) -> None:
        self._restart_timers.pop(slot.spec.name, None)
        if slot.status != "ready" or slot.worker is None or slot.worker.alive:
            return  # evicted, or a request restarted it first

        async def restart() -> None:
            try:
                await self._ready(slot.spec)
                self._metrics.worker_restarts.labels(slot.spec.name).inc()
            except ModelUnavailable as exc:
                log.error("restarting the worker for %s failed: %s", slot.spec.name, exc.message)

        task = asyncio.create_task(restart(), name=f"restart-{slot.spec.name}")
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    def _load_and_warm(self, spec: ModelSpec) -> Engine:
        engine = self._loader(spec)
        if device.backend() == "cpu":
            # New shapes cost nothing extra on CPU: a token warm-up, and exact batch sizes (no filler rows).
            engine.warmup()
        else:
            engine.bucket_rows = True
            engine.compiled = self._compile
            device.bound_gpu_memory(self._gpu_workspace)
            started = time.perf_counter()
            try:
                shapes = engine.warmup(
                    max_batch=self._limits.max_size,
                    max_tokens=self._limits.max_tokens,
                    max_length=_WARM_LENGTH,
                )
            except BaseException as exc:
                _free_memory()  # a failed warm-up's leftovers (its traceback holds arrays) not kept for the retry
                if not isinstance(exc, WarmupFailed):
                    raise
                limits = self._limits
                raise RuntimeError(
                    f"{exc}; if the device ran out of memory, lower MAX_BATCH_TOKENS (now {limits.max_tokens}) "
                    f"or MAX_BATCH_SIZE (now {limits.max_size})"
                ) from exc
            # The warm-up leaves tens of GB of buffers in MLX's cache, sized for shapes traffic rarely repeats;
            # kept, they push the allocator into freeing (and synchronizing the device) on later misses. Its
            # arrays are freed already (no cycles), so no full collection here: the freeze once the model is
            # ready runs one, and a thawing one here held the GIL for another 26 ms (108k objects on this
            # 2-core machine; 50-100 ms under load), stalling every other model's traffic.
            mx.clear_cache()
            log.info("%s: warmed %d shapes in %.1fs", spec.name, shapes, time.perf_counter() - started)
        return engine

    def _loaded_count(self) -> int:
        return sum(1 for s in self._slots.values() if s.engine is not None)

    async def _make_room(self, incoming: ModelSlot) -> None:
        while self._loaded_count() >= self.max_models:
            candidates = [
                s
                for s in self._slots.values()
                if s is not incoming and s.engine is not None and s.spec.name != self.default and not s.busy
            ]
            if not candidates:
                raise ModelUnavailable(
                    f"all {self.max_models} model slots hold models in use (MAX_MODELS); retry shortly",
                    headers={"Retry-After": "5"},
                )
            await self._evict(min(candidates, key=lambda s: s.last_used))

    async def _evict(self, slot: ModelSlot) -> None:
        log.info("evicting model %s (least recently used)", slot.spec.name)
        if slot.worker is not None:
            await slot.worker.stop()
        slot.engine, slot.worker, slot.tokenize, slot.status = None, None, None, "unloaded"
        self._metrics.model_evictions.labels(slot.spec.name).inc()
        self._metrics.models_loaded.set(self._loaded_count())
        await asyncio.get_running_loop().run_in_executor(self._executor, _free_memory)

    async def close(self) -> None:
        for timer in self._restart_timers.values():
            timer.cancel()
        for task in self._restarts:
            task.cancel()
        for slot in self._slots.values():
            if slot.load_task is not None:
                slot.load_task.cancel()
            if slot.worker is not None:
                await slot.worker.stop()


def _free_memory() -> None:
    collect_everything()
    mx.clear_cache()


def _reason(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return str(message)


def _unavailable(slot: ModelSlot) -> ModelUnavailable:
    retry = max(1, int(slot.retry_at - time.monotonic()))
    return ModelUnavailable(
        f"model {slot.spec.name} is unavailable: {slot.error}",
        param="model",
        headers={"Retry-After": str(retry)},
    )
